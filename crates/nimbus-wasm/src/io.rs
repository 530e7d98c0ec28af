//! In-memory stdio for guests: a capped result buffer (stdout) and line-splitting log pipes
//! (stderr, and stdout of `wasm:http`) that share one activation's log budget.

use bytes::Bytes;
use nimbus_model::activation::log_line;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Longest line kept whole; longer lines are split.
const MAX_LINE_BYTES: usize = 16 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Log lines of one activation with its byte budget (same accounting and marker as the
/// process runtimes).
#[derive(Debug)]
struct LogState {
    lines: Vec<String>,
    used: usize,
    limit: usize,
    truncated: bool,
}

impl LogState {
    fn push(&mut self, stream: &str, line: &[u8]) {
        if self.truncated {
            return;
        }
        let size = line.len() + 1;
        if self.used + size > self.limit {
            self.truncated = true;
            self.lines.push(log_line(
                nimbus_model::now_millis(),
                "stderr",
                &format!(
                    "Logs were truncated because the total bytes size exceeds the limit of {} bytes.",
                    self.limit
                ),
            ));
            return;
        }
        self.used += size;
        let text = String::from_utf8_lossy(line);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        self.lines
            .push(log_line(nimbus_model::now_millis(), stream, text));
    }
}

/// The logs of one activation; cheap to clone, one [`LogPipe`] per stream.
#[derive(Debug, Clone)]
pub(crate) struct Logs(Arc<Mutex<LogState>>);

impl Logs {
    pub(crate) fn new(limit: usize) -> Self {
        Logs(Arc::new(Mutex::new(LogState {
            lines: Vec::new(),
            used: 0,
            limit,
            truncated: false,
        })))
    }

    pub(crate) fn pipe(&self, stream: &'static str) -> LogPipe {
        LogPipe {
            logs: self.clone(),
            stream,
            partial: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Adds one line from the host (e.g. why an outbound request was refused).
    pub(crate) fn note(&self, stream: &str, text: &str) {
        lock(&self.0).push(stream, text.as_bytes());
    }

    /// Takes the lines collected so far.
    pub(crate) fn take(&self) -> Vec<String> {
        std::mem::take(&mut lock(&self.0).lines)
    }
}

/// A guest output stream whose lines become log lines of `stream`.
#[derive(Debug, Clone)]
pub(crate) struct LogPipe {
    logs: Logs,
    stream: &'static str,
    partial: Arc<Mutex<Vec<u8>>>,
}

impl LogPipe {
    fn write_bytes(&self, mut data: &[u8]) {
        let mut partial = lock(&self.partial);
        while !data.is_empty() {
            match data.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    partial.extend_from_slice(&data[..i]);
                    lock(&self.logs.0).push(self.stream, &partial);
                    partial.clear();
                    data = &data[i + 1..];
                }
                None => {
                    partial.extend_from_slice(data);
                    data = &[];
                }
            }
            while partial.len() >= MAX_LINE_BYTES {
                let rest = partial.split_off(MAX_LINE_BYTES);
                lock(&self.logs.0).push(self.stream, &partial);
                *partial = rest;
            }
        }
    }

    /// Emits an unterminated last line.
    pub(crate) fn finish(&self) {
        let mut partial = lock(&self.partial);
        if !partial.is_empty() {
            lock(&self.logs.0).push(self.stream, &partial);
            partial.clear();
        }
    }
}

/// Captures stdout up to a cap; past it the guest's writes fail and `overflowed` is set.
#[derive(Debug, Clone)]
pub(crate) struct ResultPipe {
    state: Arc<Mutex<(Vec<u8>, bool)>>,
    cap: usize,
}

impl ResultPipe {
    pub(crate) fn new(cap: usize) -> Self {
        ResultPipe {
            state: Arc::new(Mutex::new((Vec::new(), false))),
            cap,
        }
    }

    fn write_bytes(&self, data: &[u8]) -> bool {
        let mut st = lock(&self.state);
        if st.0.len() + data.len() > self.cap {
            st.1 = true;
            return false;
        }
        st.0.extend_from_slice(data);
        true
    }

    /// The bytes written and whether the cap was hit.
    pub(crate) fn take(&self) -> (Vec<u8>, bool) {
        let mut st = lock(&self.state);
        (std::mem::take(&mut st.0), st.1)
    }
}

// --- wasmtime-wasi plumbing -------------------------------------------------------------------

/// Either kind of capture, as one type implementing the stream traits.
#[derive(Debug, Clone)]
pub(crate) enum Capture {
    Log(LogPipe),
    Result(ResultPipe),
}

impl Capture {
    fn write_all(&self, data: &[u8]) -> bool {
        match self {
            Capture::Log(p) => {
                p.write_bytes(data);
                true
            }
            Capture::Result(p) => p.write_bytes(data),
        }
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        if self.write_all(&bytes) {
            Ok(())
        } else {
            Err(StreamError::Closed)
        }
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.write_all(buf) {
            Poll::Ready(Ok(buf.len()))
        } else {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "output limit reached",
            )))
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_truncates() {
        let logs = Logs::new(12);
        let p = logs.pipe("stderr");
        p.write_bytes(b"abc\nde");
        p.write_bytes(b"f\n0123456789\n");
        p.finish();
        let lines = logs.take();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].ends_with("stderr: abc"));
        assert!(lines[1].ends_with("stderr: def"));
        assert!(lines[2].contains("Logs were truncated"));
    }

    #[test]
    fn result_pipe_caps() {
        let r = ResultPipe::new(4);
        assert!(r.write_bytes(b"abc"));
        assert!(!r.write_bytes(b"de"));
        assert_eq!(r.take(), (b"abc".to_vec(), true));
    }
}
