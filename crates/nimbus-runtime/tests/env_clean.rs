//! The function's environment holds only what the runtime gives it. A test binary of its own:
//! it sets a variable in the test process, which must not race with other tests.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use nimbus_runtime::RunResult;
use serde_json::json;

#[tokio::test]
async fn server_environment_does_not_leak() {
    // SAFETY: the only test in this binary, set before any child process is started.
    unsafe { std::env::set_var("NIMBUS_SECRET_TEST", "x") };
    let (work, rt) = runtime();

    let node = "exports.main = () => ({ env: process.env });";
    let py = "import os\ndef main(a):\n    return {'env': dict(os.environ)}\n";
    let exec = "#!/bin/sh\necho '{\"ok\":true}' >&3\nwhile read -r line; do\n  printf '{\"env\":{\"secret\":\"%s\",\"name\":\"%s\",\"ack\":\"%s\"}}\\n' \"${NIMBUS_SECRET_TEST:-}\" \"$__OW_ACTION_NAME\" \"$__OW_WAIT_FOR_ACK\" >&3\ndone\n";
    for (kind, code, stem) in [
        ("nodejs:20", node, false),
        ("python:3.11", py, false),
        ("nodejs:20", node, true),
        ("python:3.11", py, true),
    ] {
        // A stem cell starts without the spec's env and gets it with the init line: the
        // function must see exactly what a normally started one sees.
        let mut inst = if stem {
            specialize(prestart(&rt, kind).await, &spec(kind, code)).await
        } else {
            start(&rt, &spec(kind, code)).await
        };
        let kind = format!("{kind}{}", if stem { " (stem)" } else { "" });
        let kind = kind.as_str();
        let out = inst.run(request(json!({}))).await;
        let RunResult::Ok(v) = out.result else {
            panic!("{kind}: {:?} {:?}", out.result, out.logs)
        };
        let env = v["env"].as_object().unwrap();
        assert!(!env.contains_key("NIMBUS_SECRET_TEST"), "{kind}: {env:?}");
        assert!(!env.contains_key("NODE_EXTRA_CA_CERTS"), "{kind}: {env:?}");
        assert_eq!(env["__OW_ACTION_NAME"], "/guest/test", "{kind}");
        assert_eq!(env["__OW_API_HOST"], "http://127.0.0.1:3233", "{kind}");
        assert_eq!(
            env["__OW_ACTIVATION_ID"], "0123456789abcdef0123456789abcdef",
            "{kind}"
        );
        assert_eq!(env["PATH"], "/usr/local/bin:/usr/bin:/bin", "{kind}");
        let home = env["HOME"].as_str().unwrap();
        assert!(
            home.starts_with(work.path().to_str().unwrap()),
            "{kind}: HOME={home}"
        );
        // Only these, plus what the interpreter itself adds.
        for k in env.keys() {
            let allowed = k.starts_with("__OW_")
                || ["PATH", "HOME", "LANG", "PWD", "LC_CTYPE"].contains(&k.as_str());
            assert!(allowed, "{kind}: unexpected variable {k}");
        }
        inst.shutdown().await;
    }

    let mut inst = start(&rt, &spec("exec", exec)).await;
    let out = inst.run(request(json!({}))).await;
    assert_eq!(
        out.result,
        RunResult::Ok(json!({"env": {"secret": "", "name": "/guest/test", "ack": "1"}}))
    );
    inst.shutdown().await;
}
