"""Alert: only runs for readings above the threshold (the rule's filter decides), and records
the alert. A real deployment would page someone here."""
import subprocess


def main(args):
    sql = (
        "SET search_path TO :\"schema\";"
        "INSERT INTO alerts (reading_id, device, temp_c) VALUES (:'id', :'device', :'temp') "
        "ON CONFLICT (reading_id) DO NOTHING;"
    )
    out = subprocess.run(
        ["psql", args["pg"], "-v", "ON_ERROR_STOP=1", "-qAt",
         "-v", f"id={args['id']}", "-v", f"device={args['device']}", "-v", f"temp={args['tempC']}",
         "-v", f"schema={args.get('schema', 'iot')}"],
        input=sql, capture_output=True, text=True, timeout=20,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip()}
    print(f"ALERT {args['device']} at {args['tempC']} C")
    return {"alert": True, "device": args["device"], "tempC": args["tempC"]}
