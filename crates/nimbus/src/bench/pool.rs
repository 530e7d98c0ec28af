//! The pool suite (issue 4): cold starts with and without a stem cell, bursts of concurrent
//! one-second invocations (when does the N-th instance enter user code), idle memory per
//! instance (PSS), and process-start baselines of the interpreters, all in one run.
//!
//! Two servers are started one after the other: one with stem cells (`--stem-cells N`) and one
//! without (`--stem-cells 0`), both with throttles, instance cap and memory budget raised far
//! enough for the largest burst.

use super::{Server, Stats, guest, load_average, ms_or_dash, put_action, stats};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub(super) struct Opts {
    pub cold: usize,
    pub bursts: Vec<usize>,
    pub baseline: usize,
    pub stem_cells: usize,
}

const PY: &str = "python:3.11";
const NODE: &str = "nodejs:20";
const PY_NOOP: &str = "def main(args):\n    return {}\n";
const NODE_NOOP: &str = "function main(params) { return {}; }";
/// Records when user code was entered (seconds since the epoch), then sleeps one second.
const PY_SLEEP: &str = "import time\n\n\ndef main(args):\n    entered = time.time()\n    time.sleep(1)\n    return {\"entered\": entered}\n";
const NODE_SLEEP: &str = "function main(params) {\n  const entered = Date.now() / 1000;\n  return new Promise((resolve) => setTimeout(() => resolve({ entered }), 1000));\n}\n";
/// Memory of every action of this suite (the platform's minimum).
const MEMORY_MB: u64 = 128;
/// Node.js burst used for the idle-memory figure of Node.js instances.
const NODE_BURST: usize = 10;

fn server_args(stem_cells: usize) -> Vec<String> {
    [
        "--stem-cells",
        &stem_cells.to_string(),
        "--invocations-per-minute",
        "10000000",
        "--concurrent-invocations",
        "1000",
        "--max-instances",
        "200",
        // Every action here reserves 128 MB; the second server ends with ~130 idle instances.
        "--memory-budget",
        "32768",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn limits() -> Option<Value> {
    Some(json!({"memory": MEMORY_MB}))
}

struct ColdRow {
    kind: &'static str,
    stem: bool,
    stats: Stats,
    n: usize,
    /// Invocations whose annotations did not say what was expected (`start: cold`, and
    /// `stemCell: true` exactly when measuring with stem cells).
    mismatches: usize,
}

struct BurstRow {
    label: String,
    n: usize,
    /// ms from t0 until the first and the N-th invocation entered user code.
    first: f64,
    last: f64,
    /// ms from t0 until the last response arrived.
    total: f64,
    cold: usize,
    from_stem: usize,
    errors: usize,
}

#[derive(Default)]
struct MemRow {
    instances: usize,
    pss_kb: u64,
    rss_kb: u64,
    helpers: usize,
    helper_pss_kb: u64,
}

/// Runs the suite and returns its Markdown report.
pub(super) async fn run(o: &Opts) -> anyhow::Result<String> {
    let load_before = load_average();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4)
        .build()?;

    eprintln!("bench pool: process-start baselines");
    let python = resolve_python()?;
    let node = find_in_path("node").context("node not found in PATH")?;
    let base_py = stats(process_starts(python.clone(), &["-c", "pass"], o.baseline).await?);
    let base_node = stats(process_starts(node.clone(), &["-e", "0"], o.baseline).await?);

    let mut cold_rows = Vec::new();
    let mut bursts = Vec::new();

    // 1. With stem cells: cold starts, then the bursts.
    let server = Server::start(&client, &server_args(o.stem_cells)).await?;
    for (kind, code) in [(PY, PY_NOOP), (NODE, NODE_NOOP)] {
        eprintln!("bench pool: {kind} cold starts with a stem cell");
        cold_rows.push(cold_series(&client, &server.api, kind, code, o.cold, true).await?);
    }
    for &n in &o.bursts {
        eprintln!("bench pool: burst of {n} (stem cells on)");
        let name = format!("burst-stem-{n}");
        put_action(&client, &server.api, &name, PY, PY_SLEEP, limits()).await?;
        settle(&client, &server.api, None).await?;
        let mut row = burst(&server.api, &name, n).await?;
        row.label = format!("python:3.11, --stem-cells {}", o.stem_cells);
        bursts.push(row);
    }
    server.stop().await;

    // 2. Without stem cells: the bursts, idle memory (every launcher process is then a function
    // instance), then cold starts.
    let server = Server::start(&client, &server_args(0)).await?;
    for &n in &o.bursts {
        eprintln!("bench pool: burst of {n} (no stem cells)");
        let name = format!("burst-{n}");
        put_action(&client, &server.api, &name, PY, PY_SLEEP, limits()).await?;
        settle(&client, &server.api, None).await?;
        let mut row = burst(&server.api, &name, n).await?;
        row.label = "python:3.11, --stem-cells 0".into();
        bursts.push(row);
    }
    eprintln!("bench pool: Node.js burst of {NODE_BURST} (for its idle memory)");
    put_action(
        &client,
        &server.api,
        "burst-node",
        NODE,
        NODE_SLEEP,
        limits(),
    )
    .await?;
    settle(&client, &server.api, None).await?;
    let mut row = burst(&server.api, "burst-node", NODE_BURST).await?;
    row.label = "nodejs:20, --stem-cells 0".into();
    bursts.push(row);
    settle(&client, &server.api, None).await?;
    let pool_idle = pool_state(&client, &server.api).await?["idle"]
        .as_u64()
        .unwrap_or(0);
    let (mem_py, mem_node) = match server.pid() {
        Some(pid) => idle_memory(pid)?,
        None => bail!("the server exited"),
    };
    for (kind, code) in [(PY, PY_NOOP), (NODE, NODE_NOOP)] {
        eprintln!("bench pool: {kind} cold starts without stem cells");
        cold_rows.push(cold_series(&client, &server.api, kind, code, o.cold, false).await?);
    }
    server.stop().await;

    Ok(report(
        o,
        &[
            (format!("python3 -c pass ({})", python.display()), base_py),
            (format!("node -e 0 ({})", node.display()), base_node),
        ],
        &cold_rows,
        &bursts,
        &[(PY, mem_py), (NODE, mem_node)],
        pool_idle,
        &load_before,
    ))
}

fn report(
    o: &Opts,
    baselines: &[(String, Stats)],
    cold: &[ColdRow],
    bursts: &[BurstRow],
    mem: &[(&str, MemRow)],
    pool_idle: u64,
    load_before: &str,
) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "Process start (spawn + wait, clean environment), n = {}:\n\n",
        o.baseline
    ));
    md.push_str("| program | p50 (ms) | p99 (ms) |\n|---|---|---|\n");
    for (label, s) in baselines {
        md.push_str(&format!(
            "| {label} | {} | {} |\n",
            ms_or_dash(s.p50),
            ms_or_dash(s.p99)
        ));
    }

    md.push_str(
        "\nCold start (first blocking invoke of a new action, sandboxed, 128 MB):\n\n\
         | kind | stem cell | n | cold p50 (ms) | cold p99 (ms) | annotation mismatches |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in cold {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.kind,
            if r.stem {
                format!("yes (--stem-cells {})", o.stem_cells)
            } else {
                "no (--stem-cells 0)".into()
            },
            r.n,
            ms_or_dash(r.stats.p50),
            ms_or_dash(r.stats.p99),
            r.mismatches
        ));
    }

    md.push_str(
        "\nBurst (N concurrent blocking invokes of a new one-second function, one connection \
         each; times from t0, just before all N are sent):\n\n\
         | function | N | first entered (ms) | T_N: N-th entered (ms) | instances/s (N / T_N) | all answered (ms) | cold starts (from stem cells) | errors |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for b in bursts {
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.0} | {} ({}) | {} |\n",
            b.label,
            b.n,
            b.first,
            b.last,
            b.n as f64 / (b.last / 1000.0),
            b.total,
            b.cold,
            b.from_stem,
            b.errors
        ));
    }

    md.push_str(&format!(
        "\nIdle memory per instance (after the bursts without stem cells; the pool reported \
         {pool_idle} idle instances):\n\n\
         | kind | instances | PSS per instance (MB) | RSS per instance (MB) | bwrap processes | their PSS per instance (MB) |\n\
         |---|---|---|---|---|---|\n"
    ));
    for (kind, m) in mem {
        let per = |kb: u64| {
            if m.instances == 0 {
                f64::NAN
            } else {
                kb as f64 / 1024.0 / m.instances as f64
            }
        };
        md.push_str(&format!(
            "| {kind} | {} | {} | {} | {} | {} |\n",
            m.instances,
            ms_or_dash(per(m.pss_kb)),
            ms_or_dash(per(m.rss_kb)),
            m.helpers,
            ms_or_dash(per(m.helper_pss_kb))
        ));
    }
    md.push_str(&format!(
        "\nload average before: {load_before}; at the end: {}",
        load_average()
    ));
    md
}

/// The real interpreter behind `python3`, found the way the runtime does (a pyenv shim needs the
/// caller's environment, which the measured start does not get).
fn resolve_python() -> anyhow::Result<PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-I", "-c", "import sys; print(sys.executable)"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("running python3")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().last().map(PathBuf::from) {
        Some(p) if out.status.success() && p.is_absolute() && p.is_file() => Ok(p),
        _ => bail!("python3 did not name its interpreter"),
    }
}

fn find_in_path(bin: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// Milliseconds of spawn + wait of `program args`, environment cleared but for
/// `PATH=/usr/bin:/bin`; three unmeasured runs first.
async fn process_starts(
    program: PathBuf,
    args: &'static [&'static str],
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(n);
        for i in 0..n + 3 {
            let t = Instant::now();
            let status = std::process::Command::new(&program)
                .args(args)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .with_context(|| format!("starting {}", program.display()))?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if !status.success() {
                bail!("{} {args:?} exited with {status}", program.display());
            }
            if i >= 3 {
                out.push(ms);
            }
        }
        Ok(out)
    })
    .await?
}

/// The node's pool as `GET …/instances` shows it.
async fn pool_state(client: &reqwest::Client, api: &str) -> anyhow::Result<Value> {
    let r = guest(client.get(format!("{api}/api/v1/namespaces/_/instances")))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("listing instances answered {}", r.status());
    }
    let v: Value = r.json().await?;
    Ok(v["pool"].clone())
}

fn stem_cells(pool: &Value, kind: &str) -> u64 {
    pool["stemCells"][kind].as_u64().unwrap_or(0)
}

/// Waits until nothing is starting or running, `stem_kind` (if any) has a stem cell, and the
/// stem-cell counts have not changed for 300 ms (the background refill is done, so it does not
/// compete with the next measurement for the CPU).
async fn settle(
    client: &reqwest::Client,
    api: &str,
    stem_kind: Option<&str>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Value::Null;
    let mut quiet_since = Instant::now();
    loop {
        let p = pool_state(client, api).await?;
        let quiet = p["starting"].as_u64() == Some(0)
            && p["busy"].as_u64() == Some(0)
            && stem_kind.is_none_or(|k| stem_cells(&p, k) >= 1);
        let cells = p["stemCells"].clone();
        if !quiet || cells != last {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(300) {
            return Ok(());
        }
        last = cells;
        if Instant::now() > deadline {
            bail!("the pool did not settle within 30 s: {p}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `(start, stemCell)` annotations of an activation.
fn start_annotations(activation: &Value) -> (Option<String>, bool) {
    let mut start = None;
    let mut stem = false;
    for a in activation["annotations"].as_array().into_iter().flatten() {
        match a["key"].as_str() {
            Some("start") => start = a["value"].as_str().map(str::to_string),
            Some("stemCell") => stem = a["value"].as_bool() == Some(true),
            _ => {}
        }
    }
    (start, stem)
}

/// `n` cold starts of `kind`: each on a new action, timed from sending its first blocking invoke
/// to the full answer; with `stem`, only once the pool shows a stem cell of the kind.
async fn cold_series(
    client: &reqwest::Client,
    api: &str,
    kind: &'static str,
    code: &str,
    n: usize,
    stem: bool,
) -> anyhow::Result<ColdRow> {
    let short = kind.split(':').next().unwrap_or(kind);
    let mut times = Vec::with_capacity(n);
    let mut mismatches = 0;
    for i in 0..n {
        let name = format!("cold-{short}-{}-{i}", if stem { "stem" } else { "plain" });
        put_action(client, api, &name, kind, code, limits()).await?;
        settle(client, api, stem.then_some(kind)).await?;
        let url = format!("{api}/api/v1/namespaces/_/actions/{name}?blocking=true");
        let t = Instant::now();
        let r = guest(client.post(&url).json(&json!({}))).send().await?;
        let status = r.status();
        let body = r.bytes().await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        if !status.is_success() {
            bail!(
                "invoking {name} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let activation: Value = serde_json::from_slice(&body)?;
        let (start, from_stem) = start_annotations(&activation);
        if start.as_deref() != Some("cold") || from_stem != stem {
            mismatches += 1;
        }
    }
    Ok(ColdRow {
        kind,
        stem,
        stats: stats(times),
        n,
        mismatches,
    })
}

/// One invocation of a burst, as its task saw it.
struct Shot {
    ok: bool,
    body: Vec<u8>,
    done: Instant,
}

/// `n` concurrent blocking invokes of `name`, each on its own HTTP connection (opened before t0).
async fn burst(api: &str, name: &str, n: usize) -> anyhow::Result<BurstRow> {
    let url = format!("{api}/api/v1/namespaces/_/actions/{name}?blocking=true");
    let ping = format!("{api}/api/v1");
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n.max(1));
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (ready_tx, mut go_rx) = (ready_tx.clone(), go_rx.clone());
        let (url, ping) = (url.clone(), ping.clone());
        tasks.push(tokio::spawn(async move {
            // A client of its own: this request's connection, opened and kept alive by a ping.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()?;
            client.get(&ping).send().await?.bytes().await?;
            ready_tx.send(()).await?;
            drop(ready_tx);
            go_rx.wait_for(|go| *go).await?;
            let r = guest(client.post(&url).json(&json!({}))).send().await?;
            let ok = r.status().is_success();
            let body = r.bytes().await?.to_vec();
            anyhow::Ok(Shot {
                ok,
                body,
                done: Instant::now(),
            })
        }));
    }
    drop((ready_tx, go_rx));
    for _ in 0..n {
        ready_rx
            .recv()
            .await
            .context("a burst connection could not be opened")?;
    }
    let t0_wall = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let t0 = Instant::now();
    go_tx.send(true)?;

    let mut entered = Vec::with_capacity(n);
    let mut total: f64 = 0.0;
    let (mut cold, mut from_stem, mut errors) = (0, 0, 0);
    for t in tasks {
        let shot = t.await??;
        total = total.max(shot.done.duration_since(t0).as_secs_f64() * 1000.0);
        let activation: Value = serde_json::from_slice(&shot.body).unwrap_or(Value::Null);
        match activation["response"]["result"]["entered"].as_f64() {
            Some(e) if shot.ok => entered.push((e - t0_wall) * 1000.0),
            _ => errors += 1,
        }
        let (start, stem) = start_annotations(&activation);
        if start.as_deref() == Some("cold") {
            cold += 1;
        }
        if stem {
            from_stem += 1;
        }
    }
    entered.sort_by(|a, b| a.total_cmp(b));
    Ok(BurstRow {
        label: String::new(),
        n,
        first: entered.first().copied().unwrap_or(f64::NAN),
        last: entered.last().copied().unwrap_or(f64::NAN),
        total,
        cold,
        from_stem,
        errors,
    })
}

/// `(pid, ppid)` of every process.
fn parents() -> anyhow::Result<HashMap<u32, u32>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // The command name in parentheses may contain spaces: the fields follow the last ')'.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            out.insert(pid, ppid);
        }
    }
    Ok(out)
}

/// `(Pss, Rss)` in kB from `/proc/PID/smaps_rollup`.
fn pss_rss_kb(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("Pss:")?, field("Rss:")?))
}

/// PSS of the Python and Node.js instance processes below the server: interpreters whose command
/// line runs `launcher.py` / `launcher.js`. The bubblewrap processes holding each sandbox (their
/// command lines name the launcher too) are counted apart.
fn idle_memory(server_pid: u32) -> anyhow::Result<(MemRow, MemRow)> {
    let parents = parents()?;
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, &ppid) in &parents {
        children.entry(ppid).or_default().push(pid);
    }
    let mut stack = vec![server_pid];
    let mut descendants = Vec::new();
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            descendants.push(c);
            stack.push(c);
        }
    }
    let (mut py, mut node) = (MemRow::default(), MemRow::default());
    for pid in descendants {
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let row = if args.iter().any(|a| a.ends_with("launcher.py")) {
            &mut py
        } else if args.iter().any(|a| a.ends_with("launcher.js")) {
            &mut node
        } else {
            continue;
        };
        let Some((pss, rss)) = pss_rss_kb(pid) else {
            continue;
        };
        let program = args
            .first()
            .map(|a| {
                Path::new(a)
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
            })
            .unwrap_or_default();
        if program == "bwrap" {
            row.helpers += 1;
            row.helper_pss_kb += pss;
        } else {
            row.instances += 1;
            row.pss_kb += pss;
            row.rss_kb += rss;
        }
    }
    Ok((py, node))
}
