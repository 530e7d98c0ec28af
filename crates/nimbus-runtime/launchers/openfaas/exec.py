# Nimbus adapter for `exec` functions (classic watchdog semantics): for each request it runs the
# bundle's executable function/handler (or the command in the `fprocess` environment variable,
# split on spaces, relative to the bundle), with the request body on stdin and the CGI variables
# Http_Method, Http_Path, Http_Query and Http_<Header> in its environment; stdout is the response
# body. A non-zero exit answers 500 with stderr. It runs as a warm Python instance in the pool and
# sandbox; only the handler process is per request, as with the classic watchdog.

import base64
import os
import subprocess

_HERE = os.path.dirname(os.path.abspath(__file__))

# Environment of the deployment (envVars / stack.yml `environment`), written by the gateway.
_ENV_FILE = os.path.join(_HERE, "openfaas.env.json")
if os.path.isfile(_ENV_FILE):
    import json as _json

    with open(_ENV_FILE) as _f:
        os.environ.update({str(k): str(v) for k, v in _json.load(_f).items()})


def _command():
    fp = os.environ.get("fprocess", "").split()
    if not fp:
        return [os.path.join(_HERE, "function", "handler")]
    if not os.path.isabs(fp[0]) and os.path.exists(os.path.join(_HERE, "function", fp[0])):
        fp[0] = os.path.join(_HERE, "function", fp[0])
    return fp


def main(params):
    body = base64.b64decode(params.get("__ow_body") or "")
    env = dict(os.environ)
    env["Http_Method"] = params.get("__ow_method") or "POST"
    env["Http_Path"] = params.get("__ow_path") or "/"
    env["Http_Query"] = params.get("__ow_query") or ""
    for k, v in (params.get("__ow_headers") or {}).items():
        env["Http_" + "_".join(p.capitalize() for p in k.split("-"))] = str(v)
    p = subprocess.run(_command(), input=body, capture_output=True, cwd=os.path.join(_HERE, "function"), env=env)
    if p.returncode != 0:
        msg = b"exit status %d\n" % p.returncode + p.stderr
        return {"statusCode": 500, "headers": {}, "isBase64Encoded": True, "body": base64.b64encode(msg).decode("ascii")}
    return {"statusCode": 200, "headers": {}, "isBase64Encoded": True, "body": base64.b64encode(p.stdout).decode("ascii")}
