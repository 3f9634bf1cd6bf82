//! Self-test of the harness against the real broker (no rtcrm needed): a failure here is a
//! harness or broker problem, not an rtcrm one.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use rtcrm_integration_tests::*;

#[test]
fn produce_and_consume_round_trip() {
    let topic = format!("harness-{}", unique_suffix());
    create_topic(&topic, 3);
    let mut msgs: Vec<Msg> = (0..30).map(|i| Msg::keyed(format!("k{i}"), format!("{{\"i\":{i}}}"))).collect();
    msgs.push(Msg::tombstone("gone"));
    msgs.push(Msg::keyless(b"\xff raw"));
    let d = produce(&topic, &msgs);
    assert_eq!(d.len(), 32);
    let parts: std::collections::BTreeSet<i32> = d.iter().map(|d| d.partition).collect();
    assert_eq!(parts.len(), 3, "keyed messages spread over the partitions");

    let recs = consume_all(&topic, 32, Duration::from_millis(500));
    assert_eq!(recs.len(), 32);
    let tomb = recs.iter().find(|r| r.key_str().as_deref() == Some("gone")).expect("the tombstone");
    assert!(tomb.payload.is_none(), "a tombstone has a null payload");
    let raw = recs.iter().find(|r| r.key.is_none()).expect("the keyless message");
    assert_eq!(raw.payload.as_deref(), Some(b"\xff raw".as_slice()));
    let k7 = recs.iter().find(|r| r.key_str().as_deref() == Some("k7")).unwrap();
    assert_eq!(k7.json()["i"], 7);
    let mine = d[7];
    assert_eq!((k7.partition, k7.offset), (mine.partition, mine.offset), "delivery reports give partition and offset");

    assert_eq!(committed_offsets(&format!("nobody-{}", unique_suffix()), &topic), vec![None, None, None]);
}

#[test]
fn http_get_and_metrics_parsing() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the request ended early");
                req.extend_from_slice(&buf[..n]);
            }
            let req = String::from_utf8_lossy(&req).to_string();
            if req.starts_with("GET /metrics ") {
                let body = "# TYPE rtcrm_events_total counter\nrtcrm_events_total{partition=\"0\"} 3\nrtcrm_events_total{partition=\"1\"} 4\n";
                write!(s, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).unwrap();
            } else {
                write!(s, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\n\r\nnot ready").unwrap();
            }
        }
    });
    let (code, body) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert_eq!(metric_value(&body, "rtcrm_events_total"), Some(7.0));
    assert_eq!(http_get(&addr, "/readyz").unwrap(), (503, "not ready".to_string()));
}
