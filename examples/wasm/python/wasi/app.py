"""A wasm:wasi function in Python: a wasi:cli command component built with componentize-py.

The invocation parameters arrive as one JSON document on stdin; the result is the JSON written
to stdout; whatever goes to stderr becomes the activation's logs.
"""

import json
import os
import sys

from componentize_py_types import Err
from wit_world import exports


def greet(params: dict) -> dict:
    name = params.get("name", "stranger")
    print(f"greeting {name}", file=sys.stderr)
    out = {
        "greeting": f"Hello, {name}!",
        "language": "python",
        # What the sandbox lets the function see: no environment, no host files.
        "envVars": len(os.environ),
        "canReadHostFiles": can_read("/etc/passwd"),
    }
    if "env" in params:
        out["envValue"] = os.environ.get(params["env"])
    if "readFile" in params:
        try:
            with open(params["readFile"]) as f:
                out["file"] = f.read()
        except OSError as e:
            out["file"] = {"error": str(e)}
    return out


def can_read(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.read(1)
        return True
    except OSError:
        return False


class Run(exports.Run):
    def run(self) -> None:
        try:
            params = json.loads(sys.stdin.read() or "{}")
        except ValueError as e:
            print(f"parameters are not JSON: {e}", file=sys.stderr)
            raise Err(None)
        # Misbehaviours for the platform's tests: a busy loop and a large allocation.
        if params.get("spin"):
            while True:
                pass
        if "allocMb" in params:
            block = bytearray(params["allocMb"] << 20)
            json.dump({"allocated": len(block)}, sys.stdout)
            return
        if params.get("fail"):
            # A failed run (exit status 1): the platform reports a developer error.
            print("failing on request", file=sys.stderr)
            raise Err(None)
        json.dump(greet(params), sys.stdout)
        sys.stdout.flush()
        sys.stderr.flush()
