// Ingest/transform: turns one MQTT reading event into a normalized reading, or drops it.
//
// Input (the MQTT feed's event): {topic, payload, qos, retained, receivedAt, ...}.
// Two device formats are understood:
//   {"device": "d1", "temp": 21.5, "unit": "C"}        (unit C or F, default C)
//   {"id": "d4", "tempF": 70.7}                        (older firmware, Fahrenheit)
// Output: {device, tempC, topic, receivedAt} or {dropped: true, reason, topic}.
function main(ev) {
  const p = ev.payload;
  const drop = (reason) => ({ dropped: true, reason, topic: ev.topic });
  if (p === null || typeof p !== 'object' || Array.isArray(p)) {
    return drop('payload is not a JSON object');
  }
  let device, tempC;
  if (typeof p.tempF === 'number' && typeof p.id === 'string') {
    device = p.id;
    tempC = (p.tempF - 32) * 5 / 9;
  } else if (typeof p.temp === 'number' && typeof p.device === 'string') {
    device = p.device;
    const unit = p.unit || 'C';
    if (unit === 'C') tempC = p.temp;
    else if (unit === 'F') tempC = (p.temp - 32) * 5 / 9;
    else return drop(`unknown unit ${JSON.stringify(unit)}`);
  } else {
    return drop('no numeric temperature and device id');
  }
  if (!isFinite(tempC) || tempC < -80 || tempC > 200) {
    return drop(`temperature ${tempC} out of range`);
  }
  // The topic must name the same device (sensors/<device>/reading).
  const parts = (ev.topic || '').split('/');
  if (parts[1] !== device) {
    return drop(`device ${device} published on ${ev.topic}`);
  }
  return {
    device,
    tempC: Math.round(tempC * 100) / 100,
    topic: ev.topic,
    receivedAt: ev.receivedAt || Date.now(),
  };
}
