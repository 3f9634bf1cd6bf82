//! Structured logs on stderr (tracing), as text or JSON.
//!
//! - Text: colours only when stderr is a terminal and `NO_COLOR` is unset, so a log written to a
//!   file or a pipe carries no escape codes.
//! - JSON: one flat object per line, `{"timestamp", "level", "target", "message", ...fields}`
//!   (the message and the event's fields at the top level, as log shippers expect), no colours.

use crate::cli::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Whether text logs get ANSI colours: only on a terminal, and never with `NO_COLOR` set
/// (https://no-color.org: any non-empty value).
pub fn colours(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

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
        LogFormat::Text => builder
            .with_ansi(colours(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR")))
            .with_target(true)
            .init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).with_ansi(false).init(),
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
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(!colours(false, None), "a file or a pipe gets no escape codes");
        assert!(!colours(true, Some("1".into())));
        assert!(colours(true, Some("".into())), "an empty NO_COLOR is unset (no-color.org)");
    }

    #[test]
    fn the_limiter_allows_one_line_per_key_and_period() {
        let l = LogLimiter::new(std::time::Duration::from_secs(3600));
        assert!(l.allow("a") && l.allow("b"));
        assert!(!l.allow("a") && !l.allow("b"));
        let l = LogLimiter::new(std::time::Duration::ZERO);
        assert!(l.allow("a") && l.allow("a"));
    }
}
