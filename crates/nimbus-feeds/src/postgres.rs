//! `/whisk.system/postgres/changes`: row changes of a PostgreSQL table fire the trigger.
//!
//! Parameters: `url` (a libpq connection string, `host=… dbname=…` or `postgres://…`), `table`
//! (`name` or `schema.name`) and optional `operations` (any of `insert`, `update`, `delete`;
//! default all three).
//!
//! Registering installs, in the database, a row-level `AFTER` trigger, its function and a change
//! table private to the registration (`nimbus_feed_<hash>_changes`): each change inserts its
//! event there, in the writer's own transaction, and `pg_notify`s a channel the feed LISTENs on.
//! The notification is only a wake-up; the feed reads the change table in order, fires, and
//! deletes the rows it fired only once the fire was durably accepted. So a change made while
//! the feed is disconnected, or the server is down or crashes, is delivered when it is back
//! (at least once), and a row of any size goes through (NOTIFY payloads are capped at 8000
//! bytes; the table is not). The event is `{operation, schema, table, row, old}`: `row` is the
//! new row (insert, update), `old` the previous one (update, delete); its CloudEvents `id` is
//! the change's sequence number, stable across redeliveries.

use crate::error::{FeedError, FeedResult, invalid};
use crate::event::CloudEvent;
use crate::fire::{Backoff, Fired, Firer};
use futures_util::StreamExt;
use nimbus_egress::{EgressPolicy, host_port};
use nimbus_store::FeedRegistration;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use tokio::net::TcpStream;
use tokio_postgres::{AsyncMessage, NoTls};

#[derive(Debug, Clone)]
struct Config {
    url: String,
    schema: Option<String>,
    table: String,
    operations: Vec<&'static str>,
}

fn ident_ok(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == '$')
        && s.len() <= 63
}

fn parse(p: &Map<String, Value>) -> FeedResult<Config> {
    let url = p
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            invalid(
                "The postgres feed needs 'url', e.g. 'host=127.0.0.1 user=postgres dbname=test'.",
            )
        })?
        .to_string();
    url.parse::<tokio_postgres::Config>().map_err(|e| {
        invalid(format!(
            "'url' is not a valid PostgreSQL connection string: {e}"
        ))
    })?;
    let table = p
        .get("table")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("The postgres feed needs 'table' (name or schema.name)."))?;
    let (schema, name) = match table.split_once('.') {
        Some((s, t)) => (Some(s.to_string()), t.to_string()),
        None => (None, table.to_string()),
    };
    if !ident_ok(&name) || schema.as_deref().is_some_and(|s| !ident_ok(s)) {
        return Err(invalid(format!(
            "'table' must be an unquoted identifier or schema.identifier (letters, digits, _), not '{table}'."
        )));
    }
    let list: Vec<String> = match p.get("operations") {
        None | Some(Value::Null) => vec!["insert".into(), "update".into(), "delete".into()],
        Some(Value::String(s)) => s
            .split(',')
            .map(|x| x.trim().to_ascii_lowercase())
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_ascii_lowercase).unwrap_or_default())
            .collect(),
        Some(_) => {
            return Err(invalid(
                "'operations' must be a list of insert, update, delete.",
            ));
        }
    };
    let mut operations = Vec::new();
    for o in &list {
        let op = match o.as_str() {
            "insert" => "insert",
            "update" => "update",
            "delete" => "delete",
            other => {
                return Err(invalid(format!(
                    "'operations': unknown operation '{other}' (insert, update, delete)."
                )));
            }
        };
        if !operations.contains(&op) {
            operations.push(op);
        }
    }
    if operations.is_empty() {
        return Err(invalid(
            "'operations' must name at least one of insert, update, delete.",
        ));
    }
    Ok(Config {
        url,
        schema,
        table: name,
        operations,
    })
}

pub(crate) fn configure(params: Map<String, Value>) -> FeedResult<Value> {
    parse(&params)?;
    Ok(Value::Object(params))
}

/// Hides a password inside a connection string.
pub(crate) fn redact(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        && let Some((cred, host)) = rest.split_once('@')
    {
        let user = cred.split(':').next().unwrap_or_default();
        return format!("postgres://{user}:********@{host}");
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=********"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Names private to one registration: channel, function and trigger share them.
fn object_name(reg: &FeedRegistration) -> String {
    let h = Sha256::digest(format!("{}/{}", reg.namespace, reg.trigger).as_bytes());
    format!("nimbus_feed_{}", &hex::encode(h)[..16])
}

fn qualified(cfg: &Config) -> String {
    match &cfg.schema {
        Some(s) => format!("\"{s}\".\"{}\"", cfg.table),
        None => format!("\"{}\"", cfg.table),
    }
}

type PgConnection = tokio_postgres::Connection<TcpStream, tokio_postgres::tls::NoTlsStream>;

/// The TCP destinations of a connection string, in order (`host` entries with their `port`,
/// default 5432). Unix-socket hosts are refused: they are this machine's own databases.
fn targets(cfg: &tokio_postgres::Config) -> FeedResult<Vec<(String, u16, Option<IpAddr>)>> {
    let hosts = cfg.get_hosts();
    if hosts.is_empty() {
        return Err(invalid(
            "'url' must name the database server: host=ADDRESS (or postgres://ADDRESS/...).",
        ));
    }
    let ports = cfg.get_ports();
    let addrs = cfg.get_hostaddrs();
    let mut out = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        match h {
            tokio_postgres::config::Host::Tcp(name) => {
                out.push((name.clone(), port, addrs.get(i).copied()))
            }
            tokio_postgres::config::Host::Unix(_) => {
                return Err(FeedError::EgressRefused(
                    "Unix-socket PostgreSQL hosts are not reachable from feeds: give host=ADDRESS."
                        .into(),
                ));
            }
        }
    }
    Ok(out)
}

/// What the egress policy checks at CREATE: every host (or its `hostaddr`) with its port.
pub(crate) fn destinations(p: &Map<String, Value>) -> FeedResult<Vec<(String, u16)>> {
    let cfg = parse(p)?;
    let pg = cfg.url.parse::<tokio_postgres::Config>().map_err(|e| {
        invalid(format!(
            "'url' is not a valid PostgreSQL connection string: {e}"
        ))
    })?;
    Ok(targets(&pg)?
        .into_iter()
        .map(|(host, port, addr)| (addr.map_or(host, |a| a.to_string()), port))
        .collect())
}

/// Connects through the egress policy: each host in turn is resolved and checked and the
/// checked address dialled (an explicit `hostaddr` is checked as is), then the PostgreSQL
/// handshake runs on that connection within the policy's connect timeout, so a port that
/// accepts and never answers fails in seconds.
async fn connect(
    egress: &EgressPolicy,
    url: &str,
) -> Result<(tokio_postgres::Client, PgConnection), ConnectFailure> {
    let cfg = url
        .parse::<tokio_postgres::Config>()
        .map_err(|e| ConnectFailure::Failed(e.to_string()))?;
    let mut errors = Vec::new();
    let targets = targets(&cfg).map_err(|e| match e {
        FeedError::EgressRefused(m) => ConnectFailure::Refused(m),
        other => ConnectFailure::Failed(other.to_string()),
    })?;
    for (host, port, addr) in targets {
        let stream = match addr {
            Some(ip) => {
                egress
                    .connect_checked(&ip.to_string(), port, &[SocketAddr::new(ip, port)])
                    .await
            }
            None => egress.connect_tcp(&host, port).await,
        };
        let stream = match stream {
            Ok(s) => s,
            // A refused host refuses the whole connection string (no trying the next one).
            Err(e) if e.is_refusal() => return Err(ConnectFailure::Refused(e.to_string())),
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let limit = egress.connect_timeout();
        match tokio::time::timeout(limit, cfg.connect_raw(stream, NoTls)).await {
            Ok(Ok(pair)) => return Ok(pair),
            Ok(Err(e)) => errors.push(format!("{}: {e}", host_port(&host, port))),
            Err(_) => errors.push(format!(
                "could not connect to {}: no PostgreSQL handshake within {} s",
                host_port(&host, port),
                limit.as_secs()
            )),
        }
    }
    Err(ConnectFailure::Failed(errors.join("; ")))
}

/// Why [`connect`] failed: the egress policy refused a host, or none could be reached.
#[derive(Debug)]
enum ConnectFailure {
    Refused(String),
    Failed(String),
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectFailure::Refused(m) | ConnectFailure::Failed(m) => f.write_str(m),
        }
    }
}

async fn install_with(
    client: &tokio_postgres::Client,
    cfg: &Config,
    name: &str,
) -> Result<(), tokio_postgres::Error> {
    let events = cfg
        .operations
        .iter()
        .map(|o| o.to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(" OR ");
    let table = qualified(cfg);
    // The identifiers were validated (and are quoted); the object names are ours. The change
    // table lives beside the watched table (same schema), so the writer's privileges suffice.
    let changes = changes_table(cfg, name);
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {changes} (id bigserial PRIMARY KEY, body jsonb NOT NULL);
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $nimbus$
BEGIN
  INSERT INTO {changes} (body) VALUES (jsonb_build_object(
    'operation', lower(TG_OP), 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME,
    'row', CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE to_jsonb(NEW) END,
    'old', CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE to_jsonb(OLD) END));
  PERFORM pg_notify('{name}', '');
  RETURN NULL;
END $nimbus$;
DROP TRIGGER IF EXISTS {name} ON {table};
CREATE TRIGGER {name} AFTER {events} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}();"
    );
    client.batch_execute(&sql).await
}

/// The registration's change table, in the watched table's schema.
fn changes_table(cfg: &Config, name: &str) -> String {
    match &cfg.schema {
        Some(s) => format!("\"{s}\".\"{name}_changes\""),
        None => format!("\"{name}_changes\""),
    }
}

/// Changes read per round trip.
const CHANGE_BATCH: i64 = 256;

/// How long installing the trigger may take at CREATE (it may wait for a lock on the table).
const INSTALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub(crate) async fn install(egress: &EgressPolicy, reg: &FeedRegistration) -> FeedResult<()> {
    let cfg = reg
        .config
        .as_object()
        .map(parse)
        .transpose()?
        .ok_or_else(|| invalid("no configuration"))?;
    let (client, conn) = connect(egress, &cfg.url).await.map_err(|e| match e {
        ConnectFailure::Refused(m) => FeedError::EgressRefused(m),
        ConnectFailure::Failed(m) => FeedError::Unavailable(format!(
            "cannot connect to PostgreSQL ({}): {m}",
            redact(&cfg.url)
        )),
    })?;
    let driver = tokio::spawn(conn);
    let r = tokio::time::timeout(
        INSTALL_TIMEOUT,
        install_with(&client, &cfg, &object_name(reg)),
    )
    .await;
    drop(client);
    close(driver, egress).await;
    match r {
        Ok(r) => r.map_err(|e| {
            let detail = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string());
            invalid(format!(
                "cannot install the change trigger on {}: {detail}",
                qualified(&cfg)
            ))
        }),
        Err(_) => Err(FeedError::Unavailable(format!(
            "installing the change trigger on {} did not finish within {} s (is the table locked?)",
            qualified(&cfg),
            INSTALL_TIMEOUT.as_secs()
        ))),
    }
}

pub(crate) async fn uninstall(egress: &EgressPolicy, reg: &FeedRegistration) -> Result<(), String> {
    let cfg = reg
        .config
        .as_object()
        .map(parse)
        .transpose()
        .map_err(|e| e.to_string())?
        .ok_or("no configuration")?;
    let (client, conn) = connect(egress, &cfg.url).await.map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let name = object_name(reg);
    let sql = format!(
        "DROP TRIGGER IF EXISTS {name} ON {}; DROP FUNCTION IF EXISTS {name}();
             DROP TABLE IF EXISTS {};",
        qualified(&cfg),
        changes_table(&cfg, &name)
    );
    let r = match tokio::time::timeout(INSTALL_TIMEOUT, client.batch_execute(&sql)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "did not finish within {} s",
            INSTALL_TIMEOUT.as_secs()
        )),
    };
    drop(client);
    close(driver, egress).await;
    r
}

/// Lets a connection whose client was dropped say goodbye, for a bounded time.
async fn close(
    mut driver: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    egress: &EgressPolicy,
) {
    if tokio::time::timeout(egress.connect_timeout(), &mut driver)
        .await
        .is_err()
    {
        driver.abort();
    }
}

fn source(cfg: &Config) -> String {
    let (host, db) = cfg
        .url
        .parse::<tokio_postgres::Config>()
        .map(|c| {
            let host = match c.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                _ => "localhost".to_string(),
            };
            (host, c.get_dbname().unwrap_or("postgres").to_string())
        })
        .unwrap_or_else(|_| ("localhost".into(), "postgres".into()));
    format!(
        "postgres://{host}/{db}/{}.{}",
        cfg.schema.as_deref().unwrap_or("public"),
        cfg.table
    )
}

pub(crate) async fn run(firer: Firer) {
    let reg = firer.registration().clone();
    let cfg = match reg.config.as_object().map(parse) {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            tracing::error!(trigger = %reg.trigger, error = %e, "stored postgres configuration is invalid; feed not started");
            return;
        }
        None => return,
    };
    let feed = format!("{}/{}", reg.namespace, reg.trigger);
    let name = object_name(&reg);
    let src = source(&cfg);
    let mut backoff = Backoff::default();
    loop {
        let (client, mut conn) = match connect(&firer.inner().egress, &cfg.url).await {
            Ok(c) => c,
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!(feed = %feed, error = %e, retry_in_ms = d.as_millis() as u64, "PostgreSQL unreachable; retrying");
                tokio::time::sleep(d).await;
                continue;
            }
        };
        // Notifications only wake the reader up; the change table is the queue.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        let driver = tokio::spawn(async move {
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(_)) => match tx.try_send(()) {
                        Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(())) => {}
                        Err(_) => return Ok(()),
                    },
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            Err("connection closed".to_string())
        });
        let setup = async {
            // Re-installing is idempotent and repairs a dropped trigger.
            install_with(&client, &cfg, &name).await?;
            client.batch_execute(&format!("LISTEN {name}")).await
        };
        if let Err(e) = setup.await {
            driver.abort();
            let d = backoff.next_delay();
            tracing::warn!(feed = %feed, error = %e, retry_in_ms = d.as_millis() as u64, "cannot LISTEN for table changes; retrying");
            tokio::time::sleep(d).await;
            continue;
        }
        tracing::info!(feed = %feed, table = %qualified(&cfg), "postgres change feed listening");
        backoff.reset();
        let changes = changes_table(&cfg, &name);
        // Drain what is there (changes made while disconnected first), then wait for a wake-up;
        // a 5 s poll covers a notification lost between the read and the wait.
        let lost = loop {
            match drain(&client, &changes, &firer, &src).await {
                Ok(true) => {}
                Ok(false) => {
                    driver.abort();
                    return firer.inner().retire(&reg).await;
                }
                Err(e) => break e,
            }
            tokio::select! {
                woke = rx.recv() => if woke.is_none() { break "connection closed".to_string() },
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            }
        };
        driver.abort();
        let why = match driver.await {
            Ok(Err(e)) => e,
            _ => lost,
        };
        let d = backoff.next_delay();
        tracing::warn!(feed = %feed, error = %why, retry_in_ms = d.as_millis() as u64, "PostgreSQL connection lost; reconnecting");
        tokio::time::sleep(d).await;
    }
}

/// Fires every change waiting in `changes`, oldest first, deleting each batch once its fires
/// were accepted. `Ok(false)`: the trigger is gone, stop.
async fn drain(
    client: &tokio_postgres::Client,
    changes: &str,
    firer: &Firer,
    src: &str,
) -> Result<bool, String> {
    let select = format!("SELECT id, body::text FROM {changes} ORDER BY id LIMIT {CHANGE_BATCH}");
    let delete = format!("DELETE FROM {changes} WHERE id <= $1");
    loop {
        let rows = client
            .query(&select, &[])
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = rows.last().map(|r| r.get::<_, i64>(0)) else {
            return Ok(true);
        };
        let full = rows.len() as i64 == CHANGE_BATCH;
        for row in rows {
            let (id, body): (i64, String) = (row.get(0), row.get(1));
            let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(&body) else {
                if !firer
                    .dead_letter("change row is not a JSON object", json!({"change": body}))
                    .await
                {
                    return Err("cannot store a dead letter; retrying".into());
                }
                continue;
            };
            let op = fields
                .get("operation")
                .and_then(Value::as_str)
                .unwrap_or("change")
                .to_string();
            fields.insert(
                "receivedAt".into(),
                json!(chrono::Utc::now().timestamp_millis()),
            );
            let ev = CloudEvent::new(
                format!("{src}#{id}"),
                src.to_string(),
                format!("nimbus.postgres.{op}"),
            )
            .stamp(fields);
            if matches!(firer.fire(ev).await, Fired::Gone) {
                return Ok(false);
            }
        }
        // Acknowledged only now: a crash before this line delivers the batch again.
        client
            .execute(&delete, &[&last])
            .await
            .map_err(|e| e.to_string())?;
        if !full {
            return Ok(true);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_redact() {
        let p = json!({"url": "host=127.0.0.1 dbname=test", "table": "public.readings", "operations": "insert, update"});
        let c = parse(p.as_object().unwrap()).unwrap();
        assert_eq!(c.operations, vec!["insert", "update"]);
        assert_eq!(qualified(&c), "\"public\".\"readings\"");
        let bad = json!({"url": "host=x", "table": "a; drop table b"});
        assert!(parse(bad.as_object().unwrap()).is_err());
        assert_eq!(
            redact("postgres://u:secret@h/db"),
            "postgres://u:********@h/db"
        );
        assert_eq!(redact("host=h password=secret"), "host=h password=********");
    }
}
