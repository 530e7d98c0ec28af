//! A real `nimbus serve` process for integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const GUEST: &str = "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP";
pub const SYSTEM: &str = "789c46b1-71f6-4ed5-8c54-816aa4f8c502:abczO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP";

pub struct Server {
    pub child: Option<Child>,
    pub base: String,
    pub port: u16,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub client: reqwest::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    pub async fn start(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut s = Server::start_in(&dir, extra, None).await;
        s._tmp = Some(tmp);
        s
    }

    pub async fn start_in(dir: &Path, extra: &[&str], port: Option<u16>) -> Server {
        let port = port.unwrap_or_else(free_port);
        let child = Command::new(env!("CARGO_BIN_EXE_nimbus"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir)
            .args(extra)
            .env("NIMBUS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let t = Instant::now();
        loop {
            if let Ok(r) = client.get(format!("{base}/api/v1")).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Server {
            child: Some(child),
            base,
            port,
            dir: dir.to_path_buf(),
            _tmp: None,
            client,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1/namespaces/_/{path}", self.base)
    }

    pub async fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (u, k) = auth.split_once(':').unwrap();
        let mut rb = self
            .client
            .request(method, self.url(path))
            .basic_auth(u, Some(k));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.req(reqwest::Method::PUT, path, GUEST, Some(body))
            .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.req(reqwest::Method::GET, path, GUEST, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.req(reqwest::Method::POST, path, GUEST, Some(body))
            .await
    }

    /// Polls the list at `path` (as `auth`) until it holds at least `n` entries; fails the test
    /// after `within`.
    pub async fn list_at_least(
        &self,
        path: &str,
        auth: &str,
        n: usize,
        within: Duration,
    ) -> Vec<Value> {
        let t = Instant::now();
        loop {
            let (st, v) = self.req(reqwest::Method::GET, path, auth, None).await;
            assert_eq!(st, 200, "GET {path}: {v}");
            let list = v.as_array().cloned().unwrap_or_default();
            if list.len() >= n {
                return list;
            }
            assert!(
                t.elapsed() < within,
                "GET {path}: {} of {n} entries within {within:?}",
                list.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls an activation until it is recorded.
    pub async fn wait_activation(&self, id: &str, within: Duration) -> Value {
        let t = Instant::now();
        loop {
            let (s, v) = self.get(&format!("activations/{id}")).await;
            if s == 200 {
                return v;
            }
            assert!(
                t.elapsed() < within,
                "activation {id} not recorded within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let c = self.child.as_mut().unwrap();
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let status = c.wait().unwrap();
        self.child = None;
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}
