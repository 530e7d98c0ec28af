//! The function templates of `nimbus new` (OpenFaaS handler conventions).

/// (relative path, contents, executable)
pub type File = (&'static str, &'static str, bool);

pub const LANGS: &[&str] = &["python3-http", "python3", "node20", "rust-wasm", "exec"];

pub fn files(lang: &str) -> Option<&'static [File]> {
    Some(match lang {
        "python3-http" => &[
            (
                "handler.py",
                "def handle(event, context):\n    \"\"\"event.body (bytes), event.headers, event.method, event.query, event.path.\"\"\"\n    return {\n        \"statusCode\": 200,\n        \"body\": {\"message\": \"Hello from Nimbus\", \"path\": event.path},\n    }\n",
                false,
            ),
            ("requirements.txt", "", false),
        ],
        "python3" => &[
            (
                "handler.py",
                "def handle(req):\n    \"\"\"req: the request body as text; the return value is the response body.\"\"\"\n    return req\n",
                false,
            ),
            ("requirements.txt", "", false),
        ],
        "node20" => &[
            (
                "handler.js",
                "'use strict'\n\nmodule.exports = async (event, context) => {\n  const result = {\n    body: JSON.stringify(event.body),\n    'content-type': event.headers['content-type'],\n  }\n  return context.status(200).succeed(result)\n}\n",
                false,
            ),
            (
                "package.json",
                "{\n  \"name\": \"openfaas-function\",\n  \"version\": \"1.0.0\",\n  \"main\": \"handler.js\",\n  \"dependencies\": {}\n}\n",
                false,
            ),
        ],
        "exec" => &[(
            "handler",
            "#!/bin/sh\n# The request body is on stdin; what this prints is the response.\n# Http_Method, Http_Path, Http_Query and Http_<Header> are in the environment.\ncat\n",
            true,
        )],
        "rust-wasm" => &[
            (
                "Cargo.toml",
                "[package]\nname = \"function\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[dependencies]\nwstd = \"0.6\"\n",
                false,
            ),
            (
                "src/main.rs",
                "// A wasi:http component: build with `cargo build --release --target wasm32-wasip2`.\nuse wstd::http::{Body, Request, Response, StatusCode};\n\n#[wstd::http_server]\nasync fn main(_req: Request<Body>) -> wstd::http::Result<Response<Body>> {\n    Ok(Response::builder()\n        .status(StatusCode::OK)\n        .body(\"Hello from Nimbus\\n\".into())?)\n}\n",
                false,
            ),
        ],
        _ => return None,
    })
}
