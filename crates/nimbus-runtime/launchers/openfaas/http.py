# Nimbus adapter for OpenFaaS `python3-http` functions (of-watchdog http-mode semantics), put into
# a function bundle as __main__.py and run by the ordinary Python ActionLoop launcher, so the
# function lives in the same warm instance pool and sandbox as every other Python action.
#
# The gateway (nimbus-openfaas) hands each HTTP request over as parameters:
#   __ow_method, __ow_path, __ow_query (raw query string), __ow_headers (lower-case names),
#   __ow_body (base64 of the raw body)
# and expects {"statusCode": int, "headers": {...}, "body": base64} back.
#
# The user's code is function/handler.py with handle(event, context), as in the OpenFaaS
# python3-http template: event.body (bytes), event.headers, event.method, event.query, event.path;
# the return value is None (200, empty), a dict {statusCode?, body?, headers?} (a dict or list
# body is sent as JSON), or anything else (sent as its string form).

import base64
import json
import os
import socket
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))

# Environment of the deployment (envVars / stack.yml `environment`), written by the gateway.
_ENV_FILE = os.path.join(_HERE, "openfaas.env.json")
if os.path.isfile(_ENV_FILE):
    import json as _json

    with open(_ENV_FILE) as _f:
        os.environ.update({str(k): str(v) for k, v in _json.load(_f).items()})
for _d in (os.path.join(_HERE, "packages"), _HERE):
    if os.path.isdir(_d) and _d not in sys.path:
        sys.path.insert(0, _d)

from function import handler  # noqa: E402  (after the path set-up above)


class Event:
    def __init__(self, params):
        self.body = base64.b64decode(params.get("__ow_body") or "")
        self.headers = params.get("__ow_headers") or {}
        self.method = params.get("__ow_method") or "GET"
        self.path = params.get("__ow_path") or "/"
        raw = params.get("__ow_query") or ""
        self.query = {}
        if raw:
            from urllib.parse import parse_qsl

            for k, v in parse_qsl(raw, keep_blank_values=True):
                self.query.setdefault(k, v)


class Context:
    def __init__(self):
        self.hostname = os.environ.get("HOSTNAME") or socket.gethostname()


_CONTEXT = Context()


def _encode(body, headers):
    if body is None:
        return b""
    if isinstance(body, (dict, list)):
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
        return json.dumps(body).encode("utf-8")
    if isinstance(body, bytes):
        return body
    return str(body).encode("utf-8")


def main(params):
    res = handler.handle(Event(params), _CONTEXT)
    status = 200
    headers = {}
    body = res
    if isinstance(res, dict) and ("statusCode" in res or "body" in res or "headers" in res):
        status = int(res.get("statusCode") or 200)
        headers = {str(k): str(v) for k, v in (res.get("headers") or {}).items()}
        body = res.get("body")
    data = _encode(body, headers)
    return {"statusCode": status, "headers": headers, "isBase64Encoded": True, "body": base64.b64encode(data).decode("ascii")}
