"""A wasm:http function in Python: a wasi:http/proxy component built with componentize-py.

Served on a web action it sees the HTTP request as sent (method, path, query, headers, body).
Invoked with parameters it gets a POST whose body is the JSON parameters, and its JSON response
body becomes the result.
"""

import json
import sys
from urllib.parse import parse_qs

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import streams
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Delete,
    Method_Get,
    Method_Head,
    Method_Options,
    Method_Other,
    Method_Patch,
    Method_Post,
    Method_Put,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

METHODS = {
    Method_Get: "GET",
    Method_Head: "HEAD",
    Method_Post: "POST",
    Method_Put: "PUT",
    Method_Delete: "DELETE",
    Method_Patch: "PATCH",
    Method_Options: "OPTIONS",
}


def method_name(method) -> str:
    if isinstance(method, Method_Other):
        return method.value
    return METHODS.get(type(method), "OTHER")


def read_body(request: IncomingRequest) -> bytes:
    body = request.consume()
    stream = body.stream()
    chunks = []
    while True:
        try:
            chunks.append(stream.blocking_read(65536))
        except Err as e:
            if isinstance(e.value, streams.StreamError_Closed):
                break
            raise
    stream.__exit__(None, None, None)  # drop the stream before finishing the body
    return b"".join(chunks)


def respond(response_out: ResponseOutparam, status: int, content_type: str, data: bytes) -> None:
    headers = Fields.from_list([("content-type", content_type.encode())])
    response = OutgoingResponse(headers)
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    stream = body.write()
    for i in range(0, len(data), 4096):  # blocking-write-and-flush takes at most 4096 bytes
        stream.blocking_write_and_flush(data[i : i + 4096])
    stream.__exit__(None, None, None)
    OutgoingBody.finish(body, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        method = method_name(request.method())
        path, _, query = (request.path_with_query() or "/").partition("?")
        headers = {k: v.decode(errors="replace") for k, v in request.headers().entries()}
        raw = read_body(request)
        try:
            params = json.loads(raw) if raw else {}
        except ValueError:
            params = {}
        if not isinstance(params, dict):
            params = {}
        args = {k: v[0] for k, v in parse_qs(query).items()}
        name = params.get("name") or args.get("name") or "stranger"
        print(f"{method} {path} for {name}", file=sys.stderr)
        if params.get("notFound") or path.endswith("/missing"):
            respond(response_out, 404, "text/plain", b"no such thing")
            return
        out = {
            "greeting": f"Hello, {name}!",
            "language": "python",
            "method": method,
            "path": path,
            "query": args,
            "bodyBytes": len(raw),
            "userAgent": headers.get("user-agent"),
        }
        respond(response_out, 200, "application/json", json.dumps(out).encode())
