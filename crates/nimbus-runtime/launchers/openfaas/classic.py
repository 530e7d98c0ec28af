# Nimbus adapter for classic OpenFaaS templates (`python3`: handle(req) -> str), put into a
# function bundle as __main__.py and run by the ordinary Python ActionLoop launcher (warm, in the
# instance pool and sandbox). The request body arrives as text; the return value is the response
# body. See http.py for the parameter and result shapes the gateway uses.

import base64
import os
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

from function import handler  # noqa: E402


def main(params):
    req = base64.b64decode(params.get("__ow_body") or "").decode("utf-8", "replace")
    res = handler.handle(req)
    data = b"" if res is None else (res if isinstance(res, bytes) else str(res).encode("utf-8"))
    return {"statusCode": 200, "headers": {}, "isBase64Encoded": True, "body": base64.b64encode(data).decode("ascii")}
