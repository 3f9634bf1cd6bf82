//! Structured logs on stderr (tracing), as text or JSON.

use crate::cli::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` overrides the level chosen by `-v`.
pub fn init(format: LogFormat, verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_target(true).init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}

/// At most one log line per key per period (default 10 s): for errors that repeat (a broker
/// down, a campaign failing on every event), so the log shows each once in a while, not a flood.
#[derive(Debug)]
pub struct LogLimiter {
    period: std::time::Duration,
    last: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(std::time::Duration::from_secs(10))
    }
}

impl LogLimiter {
    pub fn new(period: std::time::Duration) -> LogLimiter {
        LogLimiter { period, last: Default::default() }
    }

    /// Whether a line for `key` may be logged now.
    pub fn allow(&self, key: &str) -> bool {
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(key) {
            Some(t) if now.duration_since(*t) < self.period => false,
            _ => {
                if last.len() > 10_000 {
                    last.clear();
                }
                last.insert(key.to_owned(), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_allows_one_line_per_key_and_period() {
        let l = LogLimiter::new(std::time::Duration::from_secs(3600));
        assert!(l.allow("a") && l.allow("b"));
        assert!(!l.allow("a") && !l.allow("b"));
        let l = LogLimiter::new(std::time::Duration::ZERO);
        assert!(l.allow("a") && l.allow("a"));
    }
}
