//! `GET /metrics` content negotiation: `Accept: text/plain;version=0.0.4` (and curl's `*/*`, and
//! a browser's) gets Prometheus text format 0.0.4, which Prometheus's own parser
//! (`github.com/prometheus/common/expfmt`, run by `tests/promtext`) reads with every family
//! typed (counters as counters, named `_total`); Prometheus's scrape `Accept` gets OpenMetrics.

use rtcrm_integration_tests::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const PROMETHEUS_SCRAPE: &str =
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn content_type(head: &str) -> String {
    head.lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

/// Families as expfmt parsed them: name → (type, samples).
fn parse_with_expfmt(text: &str) -> BTreeMap<String, (String, usize)> {
    let dir = workspace_dir().join("tests/promtext");
    let go = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("go")).find(|p| p.is_file()))
        .expect("`go` is not installed: this test checks /metrics with Prometheus's own parser (Go 1.24+, scripts/setup.sh)");
    let mut child = Command::new(go)
        .args(["run", "."])
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("go run tests/promtext");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "Prometheus's text parser refused /metrics:\n{}\n--- the text ---\n{text}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), (f[1].to_string(), f[2].parse().unwrap()))
        })
        .collect()
}

#[test]
fn metrics_negotiate_prometheus_text_and_openmetrics() {
    let mut dev = Processor::builder("dev").start();
    // Counters and histograms with data in them.
    let (code, body) = http_post(&dev.http, "/api/events", SEED_EVENT).unwrap();
    assert_eq!(code, 202, "{body}");
    dev.wait_metric_at_least("rtcrm_evaluations_total", 1.0, Duration::from_secs(30));

    let (code, head, text) = http_exchange(&dev.http, "GET", "/metrics", &[("Accept", "text/plain;version=0.0.4")], None).unwrap();
    assert_eq!(code, 200);
    assert_eq!(content_type(&head), "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
    let families = parse_with_expfmt(&text);
    for (name, (kind, _)) in &families {
        assert_ne!(kind, "UNTYPED", "{name} lost its type in the 0.0.4 text:\n{text}");
    }
    assert_eq!(families.get("rtcrm_events_total").map(|f| f.0.as_str()), Some("COUNTER"), "{families:?}");
    assert_eq!(families.get("rtcrm_evaluation_duration_seconds").map(|f| f.0.as_str()), Some("HISTOGRAM"), "{families:?}");
    assert_eq!(families.get("rtcrm_campaigns").map(|f| f.0.as_str()), Some("GAUGE"), "{families:?}");
    assert!(families.get("rtcrm_evaluations_total").is_some_and(|f| f.1 >= 1), "{families:?}");

    // Prometheus's scrape header: OpenMetrics, with the same families.
    let (code, head, om) = http_exchange(&dev.http, "GET", "/metrics", &[("Accept", PROMETHEUS_SCRAPE)], None).unwrap();
    assert_eq!(code, 200);
    assert_eq!(content_type(&head), "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    let om_families: Vec<String> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            }
        })
        .collect();
    // expfmt leaves out families without samples (labelled families nothing was counted in yet).
    for name in &om_families {
        let has_samples = text.lines().any(|l| !l.starts_with('#') && l.starts_with(name.as_str()));
        assert_eq!(families.contains_key(name), has_samples, "{name} in the 0.0.4 text:\n{text}");
    }
    for name in families.keys() {
        assert!(om_families.contains(name), "{name} is not an OpenMetrics family: {om_families:?}");
    }

    // curl's and a browser's Accept get the 0.0.4 text (the console's link shows it, no download).
    for accept in ["*/*", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"] {
        let (_, head, _) = http_exchange(&dev.http, "GET", "/metrics", &[("Accept", accept)], None).unwrap();
        assert_eq!(content_type(&head), "text/plain; version=0.0.4; charset=utf-8", "Accept: {accept}");
    }
    assert_eq!(dev.sigterm().code(), Some(0));
}
