//! Adapters that let OpenFaaS-style functions run on the ordinary process launchers.
//!
//! An OpenFaaS function bundle (see nimbus-openfaas) holds the user's code under `function/`
//! plus one of these adapters as its entry point (`__main__.py` for Python kinds, `index.js`
//! for Node.js). The adapter turns the gateway's request parameters (`__ow_method`, `__ow_path`,
//! `__ow_query`, `__ow_headers`, `__ow_body` in base64) into the template's handler call and
//! its answer into `{statusCode, headers, body (base64)}`. The function thus runs as a warm
//! ActionLoop process in the same instance pool and sandbox as every other process action,
//! with of-watchdog http-mode semantics (one long-lived process, handler called per request).

/// `python3-http`: `handle(event, context)` returning `{statusCode, body, headers}`.
pub const PYTHON_HTTP: &str = include_str!("../launchers/openfaas/http.py");
/// `python3` (classic): `handle(req) -> str`.
pub const PYTHON_CLASSIC: &str = include_str!("../launchers/openfaas/classic.py");
/// `exec`: an executable per request, body on stdin, stdout as the answer (classic watchdog).
pub const EXEC_FORK: &str = include_str!("../launchers/openfaas/exec.py");
/// `node20`: `async (event, context)` or `(event, context, callback)`.
pub const NODE_HTTP: &str = include_str!("../launchers/openfaas/http.js");
