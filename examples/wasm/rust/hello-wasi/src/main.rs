//! A `wasm:wasi` function: parameters as JSON on stdin, the result as JSON on stdout,
//! logs on stderr.

use serde_json::{Value, json};
use std::io::{Read, Write};

fn main() {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("cannot read stdin: {e}");
        std::process::exit(1);
    }
    let params: Value = serde_json::from_str(&input).unwrap_or(Value::Null);
    let name = params.get("name").and_then(Value::as_str).unwrap_or("stranger");
    eprintln!("greeting {name}");
    if params.get("fail").is_some() {
        std::process::exit(2);
    }
    // What the sandbox lets us see.
    let env_vars = std::env::vars().count();
    let can_read_host = std::fs::read_to_string("/etc/passwd").is_ok();
    let out = json!({
        "greeting": format!("Hello, {name}!"),
        "envVars": env_vars,
        "canReadHostFiles": can_read_host,
    });
    let mut out = out;
    // Capabilities, when granted: a file of the bundled directory and an environment variable.
    if let Some(path) = params.get("readFile").and_then(Value::as_str) {
        out["file"] = match std::fs::read_to_string(path) {
            Ok(text) => json!(text),
            Err(e) => json!({"error": e.to_string()}),
        };
        out["canWrite"] = json!(std::fs::write(path, "x").is_ok());
    }
    if let Some(name) = params.get("env").and_then(Value::as_str) {
        out["envValue"] = json!(std::env::var(name).ok());
    }
    let _ = std::io::stdout().write_all(out.to_string().as_bytes());
}
