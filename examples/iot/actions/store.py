"""Store: writes one normalized reading into PostgreSQL, then fires the `stored` trigger so
processing after storage (stats, alerts) starts only once the reading is durable.

Input: normalize's output (a reading, or {dropped: true, ...}) plus bound parameters
`pg` (a libpq connection string) and `schema`.
"""
import json
import os
import subprocess
import base64
import urllib.request


def psql(conninfo, sql, **vars):
    # psql's :'name' interpolation quotes every value as an SQL literal: no string building.
    args = ["psql", conninfo, "-v", "ON_ERROR_STOP=1", "-qAt"]
    for k, v in vars.items():
        args += ["-v", f"{k}={v}"]
    out = subprocess.run(args, input=sql, capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    return out.stdout.strip()


def fire(trigger, payload):
    host = os.environ["__OW_API_HOST"].rstrip("/")
    key = os.environ["__OW_API_KEY"]
    req = urllib.request.Request(
        f"{host}/api/v1/namespaces/_/triggers/{trigger}",
        data=json.dumps(payload).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(key.encode()).decode(),
        },
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


def main(args):
    if args.get("dropped"):
        return {"stored": False, "dropped": True, "reason": args.get("reason"), "topic": args.get("topic")}
    row_id = psql(
        args["pg"],
        "SET search_path TO :\"schema\";"
        "INSERT INTO readings (device, temp_c, received_at) "
        "VALUES (:'device', :'temp', to_timestamp(:'at'::bigint / 1000.0)) "
        "ON CONFLICT (device, received_at, temp_c) DO UPDATE SET device = excluded.device "
        "RETURNING id;",
        schema=args.get("schema", "iot"),
        device=args["device"],
        temp=args["tempC"],
        at=int(args["receivedAt"]),
    )
    reading = {"id": int(row_id), "device": args["device"], "tempC": args["tempC"], "receivedAt": args["receivedAt"]}
    fire(args.get("stored_trigger", "stored"), reading)
    return {"stored": True, **reading}
