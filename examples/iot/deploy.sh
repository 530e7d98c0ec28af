#!/usr/bin/env bash
# Deploys the IoT pipeline to a running Nimbus with the `nimbus` CLI (apihost and key from the
# CLI's configuration or NIMBUS_APIHOST / NIMBUS_AUTH).
#
#   PG='host=127.0.0.1 dbname=test' SCHEMA=iot MQTT=mqtt://127.0.0.1:1883 ./deploy.sh
set -euo pipefail
cd "$(dirname "$0")"
NIMBUS=${NIMBUS:-nimbus}
PG=${PG:-host=127.0.0.1 dbname=test}
SCHEMA=${SCHEMA:-iot}
MQTT=${MQTT:-mqtt://127.0.0.1:1883}
TOPIC_PREFIX=${TOPIC_PREFIX:-sensors}
THRESHOLD=${THRESHOLD:-50.0}

psql "$PG" -q -v ON_ERROR_STOP=1 -v schema="$SCHEMA" -f schema.sql

# The functions share the database settings through their package.
$NIMBUS package update iot -p pg "$PG" -p schema "$SCHEMA"
$NIMBUS action update iot/normalize actions/normalize.js --kind nodejs:20
# store fires the `stored` trigger through the API, so it needs its caller's key (__OW_API_KEY).
$NIMBUS action update iot/store actions/store.py --kind python:3.11 -a provide-api-key true
$NIMBUS action update iot/stats actions/stats.py --kind python:3.11
$NIMBUS action update iot/alert actions/alert.py --kind python:3.11
# ingest -> transform/drop -> store, as one sequence.
$NIMBUS action update iot/pipeline --sequence iot/normalize,iot/store

# Readings arrive from the MQTT broker (messages that are not JSON become dead letters).
$NIMBUS trigger delete readings >/dev/null 2>&1 || true
$NIMBUS trigger create readings --feed /whisk.system/mqtt/subscribe \
  -p url "$MQTT" -p topic "$TOPIC_PREFIX/+/reading" -p qos 1 -p payloadFormat json
# Processing after storage starts from this trigger, fired by iot/store once a row is durable.
$NIMBUS trigger update stored

for r in ingest stats hot; do $NIMBUS rule delete "$r" >/dev/null 2>&1 || true; done
# One device's readings are stored in order; a failing store is retried, then dead-lettered.
$NIMBUS rule create ingest readings iot/pipeline \
  --filter "topic.startsWith(\"$TOPIC_PREFIX/\") && topic.endsWith(\"/reading\")" \
  --ordering-key topic --max-attempts 5 --initial-delay 500
$NIMBUS rule create stats stored iot/stats --ordering-key device
# Threshold detection on the stream, no function needed to decide.
$NIMBUS rule create hot stored iot/alert --filter "double(tempC) > $THRESHOLD"
echo "deployed: schema $SCHEMA, broker $MQTT, topics $TOPIC_PREFIX/+/reading, alert above $THRESHOLD C"
