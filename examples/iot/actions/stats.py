"""Processing after storage: keeps per-device statistics up to date from the stored rows."""
import subprocess


def main(args):
    sql = (
        "SET search_path TO :\"schema\";"
        "INSERT INTO stats (device, readings, avg_c, max_c) "
        "SELECT device, count(*), avg(temp_c), max(temp_c) FROM readings WHERE device = :'device' GROUP BY device "
        "ON CONFLICT (device) DO UPDATE SET readings = excluded.readings, avg_c = excluded.avg_c, max_c = excluded.max_c "
        "RETURNING readings;"
    )
    out = subprocess.run(
        ["psql", args["pg"], "-v", "ON_ERROR_STOP=1", "-qAt", "-v", f"device={args['device']}",
         "-v", f"schema={args.get('schema', 'iot')}"],
        input=sql, capture_output=True, text=True, timeout=20,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip()}
    return {"device": args["device"], "readings": int(out.stdout.strip() or 0)}
