//! The store under pressure and after damage, against real `nimbus serve` processes: quotas,
//! retention, a full disk (a small tmpfs), a lost WAL or database, check, backup and restore.
#![allow(clippy::unwrap_used)]

mod common;

use common::{GUEST, Server};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn nimbus(args: &[&str], data_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("NIMBUS_LOG", "warn")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `nimbus serve` on `dir`, expected to refuse to start: its output.
fn serve_refuses(dir: &Path) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir)
        .env("NIMBUS_LOG", "warn")
        .output()
        .unwrap();
    let out = text(&o);
    assert!(!o.status.success(), "the server started: {out}");
    out
}

/// Every file under `dir/auth`, with its content.
fn auth_files(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir.join("auth"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The guest key a server without `--dev` wrote.
fn guest_key(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("auth").join("guest"))
        .unwrap()
        .trim()
        .to_string()
}

async fn put_action(s: &Server, auth: &str, name: &str, code: &str) -> (u16, Value) {
    s.req(
        Method::PUT,
        &format!("actions/{name}?overwrite=true"),
        auth,
        Some(json!({"exec": {"kind": "python:3.11", "code": code}})),
    )
    .await
}

const ECHO: &str = "def main(a):\n    return a\n";

fn remove(path: PathBuf) {
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

#[tokio::test]
async fn a_deleted_wal_after_a_crash_refuses_to_start_and_keeps_the_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut s = Server::start_in(&dir, &[], None).await;
    let key = guest_key(&dir);
    for n in 0..5 {
        let (st, v) = put_action(&s, &key, &format!("a{n}"), ECHO).await;
        assert_eq!(st, 200, "{v}");
    }
    // Killed: the commits are in the WAL, not yet in the database file.
    s.kill9();
    assert!(dir.join("nimbus.db-wal").exists());
    let keys = auth_files(&dir);
    remove(dir.join("nimbus.db-wal"));
    remove(dir.join("nimbus.db-shm"));

    let out = serve_refuses(&dir);
    assert!(out.contains("Nimbus will not start on it"), "{out}");
    assert!(out.contains("nimbus admin restore"), "{out}");
    assert!(
        out.contains("is empty") || out.contains("lost commits"),
        "{out}"
    );
    assert_eq!(auth_files(&dir), keys, "the key files are untouched");
    // Refused again, not "repaired" by the first attempt.
    serve_refuses(&dir);
    assert_eq!(auth_files(&dir), keys);
}

#[tokio::test]
async fn lost_commits_of_a_used_database_are_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut s = Server::start_in(&dir, &[], None).await;
    let key = guest_key(&dir);
    // Enough writes to checkpoint the WAL into the database file (1000 pages), then more that
    // stay in the WAL until a seal covers them.
    let big = format!(
        "def main(a):\n    return {{'x': '{}'}}\n",
        "y".repeat(600_000)
    );
    for n in 0..8 {
        let (st, v) = put_action(&s, &key, &format!("big{n}"), &big).await;
        assert_eq!(st, 200, "{v}");
    }
    let seal_file = dir.join("nimbus.db.seal");
    let before = std::fs::read_to_string(&seal_file).unwrap();
    let (st, _) = put_action(&s, &key, "late", ECHO).await;
    assert_eq!(st, 200);
    let t = Instant::now();
    while std::fs::read_to_string(&seal_file).unwrap() == before {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no seal after a write"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.kill9();
    remove(dir.join("nimbus.db-wal"));
    remove(dir.join("nimbus.db-shm"));
    // Usually the seal's commit was only in the WAL: refused. Should a checkpoint have copied
    // everything into the database file first, nothing was lost, and it may start, but then
    // with every write.
    match start_or_refuse(&dir).await {
        Err(out) => {
            assert!(
                out.contains("lost commits")
                    || out.contains("damaged")
                    || out.contains("cannot be read"),
                "{out}"
            );
            let o = nimbus(&["admin", "check"], &dir);
            assert!(!o.status.success(), "{}", text(&o));
        }
        Ok(mut child) => {
            let port = child.1;
            let c = reqwest::Client::new();
            let (u, k) = key.split_once(':').unwrap();
            let r = c
                .get(format!(
                    "http://127.0.0.1:{port}/api/v1/namespaces/_/actions/late"
                ))
                .basic_auth(u, Some(k))
                .send()
                .await
                .unwrap();
            let _ = child.0.kill();
            let _ = child.0.wait();
            assert_eq!(r.status(), 200, "started without the last write");
        }
    }
}

/// `nimbus serve` on `dir`: the running child and its port once it answers, or its output if
/// it exits first.
async fn start_or_refuse(dir: &Path) -> Result<(std::process::Child, u16), String> {
    use std::io::Read;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir)
        .env("NIMBUS_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let c = reqwest::Client::new();
    let t = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            let mut out = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            return Err(out);
        }
        if let Ok(r) = c
            .get(format!("http://127.0.0.1:{port}/api/v1"))
            .send()
            .await
            && r.status() == 200
        {
            return Ok((child, port));
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "neither started nor refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_deleted_database_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut s = Server::start_in(&dir, &[], None).await;
    let key = guest_key(&dir);
    let (st, _) = put_action(&s, &key, "a", ECHO).await;
    assert_eq!(st, 200);
    s.sigterm();
    let keys = auth_files(&dir);

    // The database alone.
    let db = dir.join("nimbus.db");
    std::fs::rename(&db, tmp.path().join("moved.db")).unwrap();
    let out = serve_refuses(&dir);
    assert!(out.contains("is missing"), "{out}");
    assert!(!db.exists(), "no new database was created");

    // Every SQLite file: the key files still show the installation.
    remove(dir.join("nimbus.db-wal"));
    remove(dir.join("nimbus.db-shm"));
    remove(dir.join("nimbus.db.seal"));
    let out = serve_refuses(&dir);
    assert!(out.contains("holds an installation (key files in"), "{out}");
    assert!(out.contains("is missing"), "{out}");
    assert!(!db.exists());
    assert_eq!(auth_files(&dir), keys);

    // `admin` refuses too instead of creating an empty store.
    let o = nimbus(&["admin", "namespace", "list"], &dir);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(!db.exists());
}

#[tokio::test]
async fn backup_while_serving_then_restore_into_a_fresh_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = Server::start_in(&dir, &[], None).await;
    let key = guest_key(&dir);
    for n in 0..20 {
        let (st, _) = put_action(&s, &key, &format!("kept{n}"), ECHO).await;
        assert_eq!(st, 200);
    }
    let (st, r) = s
        .req(
            Method::POST,
            "actions/kept0?blocking=true",
            &key,
            Some(json!({"v": 1})),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let recorded = r["activationId"].as_str().unwrap().to_string();
    // Writes keep going while the backup runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, base, key) = (stop.clone(), s.base.clone(), key.clone());
        tokio::spawn(async move {
            let c = reqwest::Client::new();
            let (u, k) = key.split_once(':').unwrap();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = c
                    .put(format!(
                        "{base}/api/v1/namespaces/_/actions/busy{n}?overwrite=true"
                    ))
                    .basic_auth(u, Some(k))
                    .json(&json!({"exec": {"kind": "python:3.11", "code": ECHO}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let file = tmp.path().join("backup.db");
    let o = nimbus(&["admin", "backup", file.to_str().unwrap()], &dir);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("verified"), "{}", text(&o));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.await.unwrap() > 0);

    // A restore into the running server's directory is refused.
    let o = nimbus(&["admin", "restore", file.to_str().unwrap()], &dir);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("is using the data directory"),
        "{}",
        text(&o)
    );

    let fresh = tmp.path().join("fresh");
    let o = nimbus(&["admin", "restore", file.to_str().unwrap()], &fresh);
    assert!(o.status.success(), "{}", text(&o));
    // The keys travel beside the backup (docs/security.md).
    std::fs::create_dir_all(fresh.join("auth")).unwrap();
    for (name, content) in auth_files(&dir) {
        std::fs::write(fresh.join("auth").join(name), content).unwrap();
    }
    drop(s);
    let s2 = Server::start_in(&fresh, &[], None).await;
    for n in 0..20 {
        let (st, v) = s2
            .req(Method::GET, &format!("actions/kept{n}"), &key, None)
            .await;
        assert_eq!(st, 200, "kept{n}: {v}");
    }
    let (st, _) = s2
        .req(Method::GET, &format!("activations/{recorded}"), &key, None)
        .await;
    assert_eq!(st, 200);
    let (st, v) = s2
        .req(
            Method::POST,
            "actions/kept1?blocking=true",
            &key,
            Some(json!({"w": 2})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
}

/// Overwrites parts of pages in the middle of the file, like a bad disk.
fn corrupt(path: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let len = std::fs::metadata(path).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let mut at = 4096 * 3;
    while at + 4096 < len {
        f.seek(SeekFrom::Start(at + 64)).unwrap();
        f.write_all(&[0x5A; 2000]).unwrap();
        at += 4096 * 4;
    }
    f.sync_all().unwrap();
}

#[tokio::test]
async fn admin_check_reports_a_corrupted_database() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut s = Server::start_in(&dir, &[], None).await;
    let key = guest_key(&dir);
    let code = format!(
        "def main(a):\n    return {{'x': '{}'}}\n",
        "z".repeat(20_000)
    );
    for n in 0..40 {
        let (st, _) = put_action(&s, &key, &format!("a{n}"), &code).await;
        assert_eq!(st, 200);
    }
    // Checked while the server runs: fine.
    let o = nimbus(&["admin", "check"], &dir);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("integrity_check: ok"), "{}", text(&o));
    s.sigterm();
    let o = nimbus(&["admin", "check"], &dir);
    assert!(o.status.success(), "{}", text(&o));
    // A stopped server left every commit in the database file.
    let wal = dir.join("nimbus.db-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);

    corrupt(&dir.join("nimbus.db"));
    let o = nimbus(&["admin", "check"], &dir);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("PROBLEM"), "{}", text(&o));
    let out = serve_refuses(&dir);
    assert!(
        out.contains("damaged") || out.contains("cannot be read"),
        "{out}"
    );
}

#[tokio::test]
async fn a_namespace_over_its_quota_gets_403_and_others_keep_working() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = Server::start_in(&dir, &["--dev", "--namespace-quota", "200KiB"], None).await;
    let code = format!(
        "def main(a):\n    return {{'x': '{}'}}\n",
        "q".repeat(60_000)
    );
    for n in 0..3 {
        let (st, v) = put_action(&s, GUEST, &format!("a{n}"), &code).await;
        assert_eq!(st, 200, "a{n}: {v}");
    }
    let (st, v) = put_action(&s, GUEST, "a3", &code).await;
    assert_eq!(st, 403, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("namespace guest has used") && msg.contains("of its 200 KiB storage quota"),
        "{msg}"
    );
    // Reaching it with records: every new invocation is refused too.
    let (st, v) = put_action(&s, GUEST, "small", ECHO).await;
    assert_eq!(st, 200, "{v}");
    let mut refused = None;
    for _ in 0..40 {
        let (st, v) = s
            .post(
                "actions/a0?blocking=true",
                json!({"pad": "p".repeat(20_000)}),
            )
            .await;
        if st == 403 {
            refused = Some(v);
            break;
        }
        assert_eq!(st, 200, "{v}");
    }
    let v = refused.expect("the quota was never reached");
    assert!(
        v["error"].as_str().unwrap().contains("storage quota"),
        "{v}"
    );
    let (st, _) = s.post("actions/small", json!({})).await;
    assert_eq!(st, 403, "async invocations are refused too");
    // Reads still work, and show the use.
    let (st, limits) = s.get("../../namespaces/_/limits").await;
    assert_eq!(st, 200);
    assert!(
        limits["storage"]["bytes"].as_u64().unwrap() >= 200 * 1024,
        "{limits}"
    );
    assert_eq!(limits["storage"]["limits"]["quotaBytes"], 200 * 1024);

    // Another namespace is not affected.
    let o = nimbus(&["admin", "namespace", "create", "other"], &dir);
    assert!(o.status.success(), "{}", text(&o));
    let other = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let (st, v) = put_action(&s, &other, "a0", &code).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = s
        .req(
            Method::POST,
            "actions/a0?blocking=true",
            &other,
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200, "{v}");

    // Deleting records frees the quota.
    let list = s
        .list_at_least("activations?limit=200", GUEST, 1, Duration::from_secs(5))
        .await;
    for a in list {
        let id = a["activationId"].as_str().unwrap();
        let (st, v) = s
            .req(Method::DELETE, &format!("activations/{id}"), GUEST, None)
            .await;
        assert_eq!(st, 200, "{v}");
    }
    let t = Instant::now();
    loop {
        let (st, v) = s.post("actions/small?blocking=true", json!({})).await;
        if st == 200 {
            break;
        }
        assert_eq!(st, 403, "{v}");
        assert!(t.elapsed() < Duration::from_secs(10), "still refused: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An operator override applies at once to new writes.
    let o = nimbus(
        &["admin", "namespace", "limits", "guest", "--quota", "10MiB"],
        &dir,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("10 MiB"), "{}", text(&o));
    let (st, v) = put_action(&s, GUEST, "a3", &code).await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test]
async fn retention_deletes_old_records_by_count_and_age() {
    let s = Server::start(&[
        "--dev",
        "--activation-max-count",
        "3",
        "--activation-max-age",
        "20s",
        "--retention-interval",
        "1s",
    ])
    .await;
    let (st, _) = put_action(&s, GUEST, "echo", ECHO).await;
    assert_eq!(st, 200);
    for n in 0..8 {
        let (st, v) = s.post("actions/echo?blocking=true", json!({"n": n})).await;
        assert_eq!(st, 200, "{v}");
    }
    // The count limit: the three newest stay.
    let t = Instant::now();
    let kept = loop {
        let (_, v) = s.get("activations?limit=100&docs=true").await;
        let list = v.as_array().unwrap().clone();
        if list.len() <= 3 {
            break list;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{} records left",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut ns: Vec<i64> = kept
        .iter()
        .map(|a| a["response"]["result"]["n"].as_i64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, vec![5, 6, 7]);
    // The age limit: then none.
    let t = Instant::now();
    loop {
        let (_, v) = s.get("activations?limit=100").await;
        if v.as_array().unwrap().is_empty() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, limits) = s.get("../../namespaces/_/limits").await;
    assert_eq!(limits["storage"]["activations"], 0, "{limits}");
}

/// A tmpfs of `size` mounted at a new directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem, then frees `leave` bytes of it.
    fn fill_leaving(&self, leave: u64) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0x42u8; 1 << 20];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(_) => break,
            }
        }
        f.set_len(written.saturating_sub(leave)).unwrap();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test]
async fn a_full_disk_gets_507_and_accepted_work_completes_once_space_returns() {
    let Some(fs) = Tmpfs::mount("64m") else {
        return;
    };
    let dir = fs.path().join("data");
    let mut s = Server::start_in(&dir, &["--dev", "--store-reserve", "4MiB"], None).await;
    // `s` seconds of sleep, then `mb` MiB of logs: a record too big for what will be left.
    let code = "import time\ndef main(a):\n    time.sleep(a.get('s', 0))\n    for i in range(a.get('mb', 0) * 1024):\n        print('x' * 1023)\n    return {'done': a.get('n')}\n";
    let (st, v) = put_action(&s, GUEST, "slowlog", code).await;
    assert_eq!(st, 200, "{v}");
    // Two warm instances, so nothing needs to start (and write files) once the disk is full.
    let (a, b) = tokio::join!(
        s.post("actions/slowlog?blocking=true", json!({"s": 1})),
        s.post("actions/slowlog?blocking=true", json!({"s": 1}))
    );
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");

    // Accepted before the disk fills: an async run, and a blocking one still running.
    let (st, v) = s
        .post("actions/slowlog", json!({"s": 4, "mb": 6, "n": 1}))
        .await;
    assert_eq!(st, 202, "{v}");
    let queued = v["activationId"].as_str().unwrap().to_string();
    let blocking = {
        let (base, client) = (s.base.clone(), s.client.clone());
        tokio::spawn(async move {
            let (u, k) = GUEST.split_once(':').unwrap();
            client
                .post(format!(
                    "{base}/api/v1/namespaces/_/actions/slowlog?blocking=true"
                ))
                .basic_auth(u, Some(k))
                .json(&json!({"s": 4, "mb": 6, "n": 2}))
                .send()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let filler = fs.fill_leaving(1 << 20);

    // New writes: 507, saying why.
    let (st, v) = put_action(&s, GUEST, "late", ECHO).await;
    assert_eq!(st, 507, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("out of storage space") && msg.contains("free"),
        "{msg}"
    );
    let (st, v) = s.post("actions/slowlog", json!({})).await;
    assert_eq!(st, 507, "{v}");
    // Reads are served.
    let (st, v) = s.get("actions").await;
    assert_eq!(st, 200, "{v}");
    let (st, _) = s.get("activations").await;
    assert_eq!(st, 200);

    // The blocking run finished, but its record could not be stored: the caller is told.
    let r = blocking.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("x-nimbus-record")
            .map(|v| v.to_str().unwrap()),
        Some("not-stored")
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["response"]["result"], json!({"done": 2}));
    let why = body["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "recordNotStored")
        .map(|a| a["value"].as_str().unwrap().to_string())
        .unwrap();
    assert!(why.contains("full"), "{why}");

    // The queued run finished too; its record waits for space (well past its 4 s run).
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(8) {
        let (st, v) = s.get(&format!("activations/{queued}")).await;
        assert_eq!(st, 404, "recorded on a full disk? {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Space returns: the same server records it, and takes new writes again.
    std::fs::remove_file(filler).unwrap();
    let a = s.wait_activation(&queued, Duration::from_secs(30)).await;
    assert_eq!(a["response"]["result"], json!({"done": 1}), "{a}");
    let (st, v) = put_action(&s, GUEST, "late", ECHO).await;
    assert_eq!(st, 200, "{v}");
    s.kill9();
}
