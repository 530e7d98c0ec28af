//! A no-op `wasi:http/proxy` component: every request gets `200` with the body `ok`. Used by
//! `nimbus bench --suite wasm` (here and under `wasmtime serve`) and the tests.

use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Noop;

wasip2::http::proxy::export!(Noop);

impl wasip2::exports::http::incoming_handler::Guest for Noop {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let response = OutgoingResponse::new(Fields::new());
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(out, Ok(response));
        if let Ok(stream) = body.write() {
            let _ = stream.blocking_write_and_flush(b"ok");
        }
        let _ = OutgoingBody::finish(body, None);
    }
}
