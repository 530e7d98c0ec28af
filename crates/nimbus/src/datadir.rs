//! The data directory: the lock a server holds on it, what shows that it holds an
//! installation, and the size and duration arguments of the storage flags.

use anyhow::Context;
use nimbus_store::Expect;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::Duration;

/// Held while a server (or a restore) uses the data directory; released when dropped or when
/// the process dies.
pub struct DirLock {
    _file: File,
}

/// Takes `DIR/nimbus.lock` exclusively (an advisory `flock`), or says which process holds it.
pub fn lock(dir: &Path, what: &str) -> anyhow::Result<DirLock> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("nimbus.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another nimbus process".to_string()
            } else {
                format!("another nimbus process (pid {holder})")
            };
            anyhow::bail!(
                "{who} is using the data directory {}; {what} needs it alone: stop that process first",
                dir.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(DirLock { _file: file })
}

/// `Existing` when the directory shows an installation other than its database (key files,
/// the OpenFaaS gateway's credentials): then a missing or empty database is a loss to report,
/// never a new installation to create (which would write new keys over the old ones).
pub fn expect(dir: &Path) -> Expect {
    let auth = dir.join("auth");
    let keys = std::fs::read_dir(&auth)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if keys {
        return Expect::Existing(format!(
            "the data directory {} holds an installation (key files in {})",
            dir.display(),
            auth.display()
        ));
    }
    for f in ["basic-auth-password", "payload-secret"] {
        let p = dir.join("openfaas").join(f);
        if p.exists() {
            return Expect::Existing(format!(
                "the data directory {} holds an installation (the OpenFaaS gateway's {})",
                dir.display(),
                p.display()
            ));
        }
    }
    Expect::Any
}

/// `1GiB`, `512MiB`, `64MB`, `100KiB`, `4096`: bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 512MiB, 1GiB, 4096)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "t" | "tb" => 1000u64.pow(4),
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit '{other}' in '{s}' (use B, KiB, MiB, GiB, TiB or KB, MB, GB, TB)"
            ));
        }
    };
    Ok((n * mult as f64) as u64)
}

/// `7d`, `12h`, `30m`, `10s`, `500ms`: a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 7d, 12h, 30m, 10s)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86_400),
        other => {
            return Err(format!(
                "unknown duration unit '{other}' in '{s}' (use ms, s, m, h or d)"
            ));
        }
    };
    Ok(d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("64MB").unwrap(), 64_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3w").is_err());
    }

    #[test]
    fn a_second_lock_is_refused_with_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path(), "serve").unwrap();
        let err = lock(dir.path(), "a restore").err().unwrap().to_string();
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        assert!(err.contains("a restore needs it alone"), "{err}");
        drop(held);
        lock(dir.path(), "serve").unwrap();
    }

    #[test]
    fn key_files_show_an_installation() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(expect(dir.path()), Expect::Any);
        std::fs::create_dir_all(dir.path().join("auth")).unwrap();
        assert_eq!(expect(dir.path()), Expect::Any);
        std::fs::write(dir.path().join("auth").join("guest"), "u:k\n").unwrap();
        assert!(matches!(expect(dir.path()), Expect::Existing(_)));
    }
}
