//! `/whisk.system/postgres/changes`: row changes of a PostgreSQL table fire the trigger.
//!
//! Parameters: `url` (a libpq connection string, `host=… dbname=…` or `postgres://…`), `table`
//! (`name` or `schema.name`) and optional `operations` (any of `insert`, `update`, `delete`;
//! default all three).
//!
//! Registering installs a row-level `AFTER` trigger and its function in the database; each
//! change calls `pg_notify` on a channel private to the registration, and the feed LISTENs on it.
//! The event is `{operation, schema, table, row, old}`: `row` is the new row (insert, update),
//! `old` the previous one (update, delete). NOTIFY payloads are capped by PostgreSQL at 8000
//! bytes; a larger change fires with `truncated: true` and no row data instead of failing the
//! writer's transaction. LISTEN/NOTIFY is not persistent: changes made while the feed is
//! disconnected are not replayed (documented limitation; a logical replication slot would be).

use crate::error::{FeedError, FeedResult, invalid};
use crate::event::CloudEvent;
use crate::fire::{Backoff, Fired, Firer};
use futures_util::StreamExt;
use nimbus_store::FeedRegistration;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
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

async fn connect(
    url: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    String,
> {
    tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| e.to_string())
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
    // The identifiers were validated (and are quoted); the channel name is ours.
    let sql = format!(
        "CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $nimbus$
DECLARE body text;
BEGIN
  body := json_build_object(
    'operation', lower(TG_OP), 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME,
    'row', CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE row_to_json(NEW) END,
    'old', CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE row_to_json(OLD) END)::text;
  IF octet_length(body) > 7900 THEN
    body := json_build_object('operation', lower(TG_OP), 'schema', TG_TABLE_SCHEMA,
      'table', TG_TABLE_NAME, 'truncated', true)::text;
  END IF;
  PERFORM pg_notify('{name}', body);
  RETURN NULL;
END $nimbus$;
DROP TRIGGER IF EXISTS {name} ON {table};
CREATE TRIGGER {name} AFTER {events} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}();"
    );
    client.batch_execute(&sql).await
}

pub(crate) async fn install(reg: &FeedRegistration) -> FeedResult<()> {
    let cfg = reg
        .config
        .as_object()
        .map(parse)
        .transpose()?
        .ok_or_else(|| invalid("no configuration"))?;
    let (client, conn) = connect(&cfg.url).await.map_err(|e| {
        FeedError::Unavailable(format!(
            "cannot connect to PostgreSQL ({}): {e}",
            redact(&cfg.url)
        ))
    })?;
    let driver = tokio::spawn(conn);
    let r = install_with(&client, &cfg, &object_name(reg)).await;
    drop(client);
    let _ = driver.await;
    r.map_err(|e| {
        let detail = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string());
        invalid(format!(
            "cannot install the change trigger on {}: {detail}",
            qualified(&cfg)
        ))
    })
}

pub(crate) async fn uninstall(reg: &FeedRegistration) -> Result<(), String> {
    let cfg = reg
        .config
        .as_object()
        .map(parse)
        .transpose()
        .map_err(|e| e.to_string())?
        .ok_or("no configuration")?;
    let (client, conn) = connect(&cfg.url).await?;
    let driver = tokio::spawn(conn);
    let name = object_name(reg);
    let r = client
        .batch_execute(&format!(
            "DROP TRIGGER IF EXISTS {name} ON {}; DROP FUNCTION IF EXISTS {name}();",
            qualified(&cfg)
        ))
        .await
        .map_err(|e| e.to_string());
    drop(client);
    let _ = driver.await;
    r
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
        let (client, mut conn) = match connect(&cfg.url).await {
            Ok(c) => c,
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!(feed = %feed, error = %e, retry_in_ms = d.as_millis() as u64, "PostgreSQL unreachable; retrying");
                tokio::time::sleep(d).await;
                continue;
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        let driver = tokio::spawn(async move {
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_string()).is_err() {
                            return Ok(());
                        }
                    }
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
        while let Some(body) = rx.recv().await {
            let fields = match serde_json::from_str::<Value>(&body) {
                Ok(Value::Object(o)) => o,
                _ => {
                    firer
                        .dead_letter(
                            "change notification is not a JSON object",
                            json!({"notification": body}),
                        )
                        .await;
                    continue;
                }
            };
            let op = fields
                .get("operation")
                .and_then(Value::as_str)
                .unwrap_or("change")
                .to_string();
            let mut fields = fields;
            fields.insert(
                "receivedAt".into(),
                json!(chrono::Utc::now().timestamp_millis()),
            );
            let ev = CloudEvent::new(
                CloudEvent::random_id(),
                src.clone(),
                format!("nimbus.postgres.{op}"),
            )
            .stamp(fields);
            if matches!(firer.fire(ev).await, Fired::Gone) {
                driver.abort();
                return firer.inner().retire(&reg).await;
            }
        }
        let why = match driver.await {
            Ok(Err(e)) => e,
            _ => "connection closed".into(),
        };
        let d = backoff.next_delay();
        tracing::warn!(feed = %feed, error = %why, retry_in_ms = d.as_millis() as u64, "PostgreSQL connection lost; reconnecting");
        tokio::time::sleep(d).await;
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
