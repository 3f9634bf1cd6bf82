//! Filter output (`console.log`, a Wasm filter's stdout/stderr) on its way to the host's log.
//!
//! A filter cannot flood the log: each line is truncated to [`LogCaps::max_line_bytes`], and each
//! filter instance may emit at most [`LogCaps::lines_per_window`] lines per
//! [`LogCaps::window`]; the rest are counted and reported as one "lines dropped" line when the
//! next window opens.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which stream a filter wrote to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// `console.log`, stdout.
    Out,
    /// `console.error`, stderr.
    Err,
}

/// Where capped filter output goes. The default, [`TracingSink`], logs through `tracing`.
pub trait LogSink: Send + Sync {
    /// One line of output from `filter`, already truncated.
    fn line(&self, filter: &str, stream: LogStream, line: &str);
    /// `count` lines from `filter` were dropped by the rate limit.
    fn dropped(&self, filter: &str, count: u64);
}

/// Logs filter output as `tracing` events with target `rtcrm::filter`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TracingSink;

impl LogSink for TracingSink {
    fn line(&self, filter: &str, stream: LogStream, line: &str) {
        match stream {
            LogStream::Out => tracing::info!(target: "rtcrm::filter", filter, "{line}"),
            LogStream::Err => tracing::warn!(target: "rtcrm::filter", filter, "{line}"),
        }
    }

    fn dropped(&self, filter: &str, count: u64) {
        tracing::warn!(target: "rtcrm::filter", filter, dropped = count, "filter log lines dropped by the rate limit");
    }
}

/// A sink that keeps every line, for tests and tools.
#[derive(Debug, Default, Clone)]
pub struct MemorySink {
    lines: Arc<Mutex<Vec<(String, LogStream, String)>>>,
    dropped: Arc<Mutex<u64>>,
}

impl MemorySink {
    /// The lines received so far: (filter, stream, text).
    pub fn lines(&self) -> Vec<(String, LogStream, String)> {
        self.lines.lock().unwrap().clone()
    }

    /// How many lines were reported dropped.
    pub fn dropped_count(&self) -> u64 {
        *self.dropped.lock().unwrap()
    }
}

impl LogSink for MemorySink {
    fn line(&self, filter: &str, stream: LogStream, line: &str) {
        self.lines.lock().unwrap().push((filter.to_owned(), stream, line.to_owned()));
    }

    fn dropped(&self, _filter: &str, count: u64) {
        *self.dropped.lock().unwrap() += count;
    }
}

/// How much output one filter instance may log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCaps {
    /// Longer lines are cut here (at a character boundary) and marked with `…`.
    pub max_line_bytes: usize,
    /// Lines allowed per window.
    pub lines_per_window: u32,
    /// The rate-limit window.
    pub window: Duration,
}

impl Default for LogCaps {
    fn default() -> Self {
        LogCaps { max_line_bytes: 512, lines_per_window: 20, window: Duration::from_secs(1) }
    }
}

/// Per-instance rate limiter in front of a [`LogSink`].
pub(crate) struct FilterLog {
    pub name: Arc<str>,
    sink: Arc<dyn LogSink>,
    caps: LogCaps,
    window_start: Option<Instant>,
    in_window: u32,
    dropped: u64,
}

impl FilterLog {
    pub fn new(name: Arc<str>, sink: Arc<dyn LogSink>, caps: LogCaps) -> FilterLog {
        FilterLog { name, sink, caps, window_start: None, in_window: 0, dropped: 0 }
    }

    /// Emits one line, if the rate limit allows it.
    pub fn line(&mut self, stream: LogStream, bytes: &[u8]) {
        let now = Instant::now();
        let expired = self.window_start.is_none_or(|s| now.duration_since(s) >= self.caps.window);
        if expired {
            if self.dropped > 0 {
                self.sink.dropped(&self.name, self.dropped);
                self.dropped = 0;
            }
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window >= self.caps.lines_per_window {
            self.dropped += 1;
            return;
        }
        self.in_window += 1;
        let text = String::from_utf8_lossy(bytes);
        if text.len() > self.caps.max_line_bytes {
            let mut cut = self.caps.max_line_bytes;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            self.sink.line(&self.name, stream, &format!("{}…", &text[..cut]));
        } else {
            self.sink.line(&self.name, stream, &text);
        }
    }

    /// The most bytes of one line worth copying out of a filter's memory.
    pub fn max_line_bytes(&self) -> usize {
        self.caps.max_line_bytes + 4
    }
}

impl Drop for FilterLog {
    fn drop(&mut self) {
        if self.dropped > 0 {
            self.sink.dropped(&self.name, self.dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_truncated_and_rate_limited() {
        let sink = MemorySink::default();
        let caps = LogCaps { max_line_bytes: 4, lines_per_window: 3, window: Duration::from_secs(3600) };
        let mut log = FilterLog::new("c1".into(), Arc::new(sink.clone()), caps);
        for _ in 0..10 {
            log.line(LogStream::Out, "héllo".as_bytes());
        }
        drop(log);
        let lines = sink.lines();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].2, "hél…");
        assert_eq!(sink.dropped_count(), 7);
    }
}
