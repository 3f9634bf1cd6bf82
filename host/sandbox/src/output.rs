//! A filter's WASI stdout and stderr: captured in memory (capped), then forwarded to its log.
//! Nothing a filter writes reaches the host's own stdout or stderr.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Bytes a filter wrote to one stream and not yet forwarded.
#[derive(Clone)]
pub(crate) struct CapturedOutput {
    inner: Arc<Shared>,
}

struct Shared {
    buf: Mutex<Vec<u8>>,
    pending: AtomicBool,
    cap: usize,
}

impl CapturedOutput {
    /// Keeps at most `cap` unforwarded bytes; more is dropped.
    pub fn new(cap: usize) -> CapturedOutput {
        CapturedOutput { inner: Arc::new(Shared { buf: Mutex::new(Vec::new()), pending: AtomicBool::new(false), cap }) }
    }

    /// Whether anything was written since the last [`CapturedOutput::take_lines`] emptied it.
    pub fn has_pending(&self) -> bool {
        self.inner.pending.load(Ordering::Relaxed)
    }

    /// Takes the complete lines written so far (and a trailing partial line when `flush_all`).
    pub fn take_lines(&self, flush_all: bool) -> Vec<Vec<u8>> {
        if !self.inner.pending.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let mut buf = self.inner.buf.lock().unwrap();
        let end = if flush_all { buf.len() } else { buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) };
        let taken: Vec<u8> = buf.drain(..end).collect();
        if buf.is_empty() {
            self.inner.pending.store(false, Ordering::Relaxed);
        }
        taken.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect()
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for CapturedOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let mut buf = self.inner.buf.lock().unwrap();
        let room = self.inner.cap.saturating_sub(buf.len());
        buf.extend_from_slice(&data[..data.len().min(room)]);
        self.inner.pending.store(true, Ordering::Relaxed);
        // Report everything as written: a filter must not spin on a full pipe.
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

