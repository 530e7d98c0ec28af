#!/usr/bin/env python3
"""A simulated sensor fleet: publishes temperature readings over MQTT (QoS 1) with
`mosquitto_pub`, in two formats and units, with some malformed messages mixed in.

    python3 simulate.py [--host 127.0.0.1] [--port 1883] [--readings 20] [--seed 7]

Prints a JSON summary of what it sent and what the pipeline should make of it (the
end-to-end test compares it with the database):
  stored   readings that should be stored (valid), per device too
  alerts   stored readings above THRESHOLD_C
  dropped  well-formed JSON that normalize must drop (missing/invalid fields)
  malformed  messages that are not JSON at all (the feed dead-letters them)
"""
import argparse
import json
import random
import subprocess

THRESHOLD_C = 50.0
# Devices d1-d3 speak {"device", "temp", "unit"} (d3 in Fahrenheit); d4 is old firmware
# speaking {"id", "tempF"}.
DEVICES = {"d1": "C", "d2": "C", "d3": "F", "d4": "legacy"}


def reading(rng, device, style):
    # Far from the threshold on either side, so unit conversions cannot flip an alert.
    c = round(rng.choice([rng.uniform(10, 45), rng.uniform(55, 90)]), 1)
    f = round(c * 9 / 5 + 32, 1)
    if style == "C":
        msg = {"device": device, "temp": c, "unit": "C"}
    elif style == "F":
        msg = {"device": device, "temp": f, "unit": "F"}
    else:
        msg = {"id": device, "tempF": f}
    return msg, c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", default="1883")
    ap.add_argument("--readings", type=int, default=20, help="messages per device")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--topic-prefix", default="sensors")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    summary = {"sent": 0, "stored": 0, "alerts": 0, "dropped": 0, "malformed": 0, "perDevice": {}}
    for device, style in DEVICES.items():
        lines = []
        stored = 0
        for i in range(args.readings):
            kind = i % 10
            if kind == 3:
                lines.append('{"device": "%s", "temp": ' % device)  # truncated: not JSON
                summary["malformed"] += 1
            elif kind == 6:
                lines.append(json.dumps({"device": device, "temp": "n/a", "unit": "C"}))
                summary["dropped"] += 1
            elif kind == 8:
                lines.append(json.dumps({"device": device, "temp": 20.0, "unit": "K"}))
                summary["dropped"] += 1
            else:
                msg, c = reading(rng, device, style)
                lines.append(json.dumps(msg))
                stored += 1
                if c > THRESHOLD_C:
                    summary["alerts"] += 1
        summary["stored"] += stored
        summary["perDevice"][device] = stored
        summary["sent"] += len(lines)
        # One publisher per device, one message per line, in order.
        subprocess.run(
            ["mosquitto_pub", "-h", args.host, "-p", str(args.port), "-q", "1",
             "-t", f"{args.topic_prefix}/{device}/reading", "-l"],
            input="\n".join(lines) + "\n", text=True, check=True, timeout=60,
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
