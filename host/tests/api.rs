//! The HTTP API against `rtcrm dev` (issue 5): every endpoint's success and failure cases, the
//! console's files, the server-sent trigger stream, body limits, and the bearer token on a
//! non-loopback bind. A tiny HTTP/1.1 client over `TcpStream` keeps the test dependency-free.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The server

struct Dev {
    child: Child,
    /// Where clients connect (loopback even when the server binds 0.0.0.0).
    addr: SocketAddr,
    log: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Dev {
    /// `rtcrm dev --http-addr <bind>:<free port> <args>`, once /readyz answers 200.
    fn start(bind: &str, args: &[&str]) -> Dev {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("rtcrm-api-test-{}-{port}.log", std::process::id()));
        let child = Command::new(env!("CARGO_BIN_EXE_rtcrm"))
            .arg("dev")
            .arg("--http-addr")
            .arg(format!("{bind}:{port}"))
            .args(args)
            .env_remove("RTCRM_API_TOKEN")
            .env_remove("RTCRM_HTTP_ADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting rtcrm dev");
        let dev = Dev { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), log };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = try_request(dev.addr, "GET", "/readyz", &[], None) {
                if r.status == 200 {
                    return dev;
                }
            }
            assert!(Instant::now() < deadline, "rtcrm dev not ready within 120 s; log:\n{}", dev.log_text());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Reply {
        try_request(self.addr, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}; log:\n{}", self.log_text()))
    }

    fn get(&self, path: &str) -> Reply {
        self.req("GET", path, &[], None)
    }

    fn post(&self, path: &str, body: &str) -> Reply {
        self.req("POST", path, &[("Content-Type", "application/json")], Some(body.as_bytes()))
    }

    fn delete(&self, path: &str) -> Reply {
        self.req("DELETE", path, &[], None)
    }

    /// Polls `GET /api/campaigns/{id}` until its state is `state`.
    fn wait_state(&self, id: i64, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.get(&format!("/api/campaigns/{id}"));
            if r.status == 200 && r.json()["state"] == state {
                return r.json();
            }
            assert!(Instant::now() < deadline, "campaign {id} not {state}: {} {}", r.status, r.body);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The `error` message of a JSON error answer, checking the status and the content type.
    fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        let message = self.json()["error"].as_str().unwrap_or_else(|| panic!("no error message: {self:?}")).to_owned();
        assert!(!message.is_empty());
        message
    }
}

fn head(stream: &mut TcpStream, method: &str, path: &str, headers: &[(&str, &str)], length: Option<usize>) -> std::io::Result<()> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        text.push_str("Host: 127.0.0.1\r\n");
    }
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(n) = length {
        text.push_str(&format!("Content-Length: {n}\r\n"));
    }
    text.push_str("\r\n");
    stream.write_all(text.as_bytes())
}

/// Reads the status line and headers.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            return Ok((status, headers));
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
}

/// One chunk of a chunked body (None at the end).
fn read_chunk(reader: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
        .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk)?;
    chunk.truncate(size);
    Ok((size > 0).then_some(chunk))
}

fn try_request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    head(&mut stream, method, path, headers, body.map(<[u8]>::len))?;
    if let Some(b) = body {
        stream.write_all(b)?;
    }
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader)?;
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut bytes = Vec::new();
    if chunked {
        while let Some(chunk) = read_chunk(&mut reader)? {
            bytes.extend(chunk);
        }
    } else {
        reader.read_to_end(&mut bytes)?;
    }
    Ok(Reply { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() })
}

/// An open `GET /api/triggers/stream`.
struct Sse {
    reader: BufReader<TcpStream>,
    pending: String,
}

impl Sse {
    fn open(addr: SocketAddr) -> Sse {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        head(&mut stream, "GET", "/api/triggers/stream", &[("Accept", "text/event-stream")], None).unwrap();
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader).unwrap();
        assert_eq!(status, 200, "{headers:?}");
        let content_type = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.as_str());
        assert_eq!(content_type, Some("text/event-stream"));
        let mut sse = Sse { reader, pending: String::new() };
        // The stream opens with a comment once it tails the topic.
        let first = sse.next_block().expect("the stream's opening comment");
        assert!(first.starts_with(": tailing crm-triggers"), "{first:?}");
        sse
    }

    /// The next event block (lines up to a blank line); None when the stream ends.
    fn next_block(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.pending.find("\n\n") {
                let block = self.pending[..i].to_owned();
                self.pending.drain(..i + 2);
                return Some(block);
            }
            match read_chunk(&mut self.reader) {
                Ok(Some(chunk)) => self.pending.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }

    /// The data of the next `message` event (skipping comments and keep-alives).
    fn next_data(&mut self) -> Option<String> {
        loop {
            let block = self.next_block()?;
            let data: Vec<&str> = block.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.strip_prefix(' ').unwrap_or(d)).collect();
            if !data.is_empty() && !block.lines().any(|l| l.starts_with("event:")) {
                return Some(data.join("\n"));
            }
        }
    }
}

fn example_event(player: i64, result: &str) -> String {
    json!({
        "event_id": format!("api-test-{player}-{result}"), "game": "foe", "market": "de", "player_id": player,
        "event_name": "fight", "created_at": "2023-11-20T11:00:00.00Z", "data": {"result": result}
    })
    .to_string()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn health_metrics_and_the_console_are_served() {
    let dev = Dev::start("127.0.0.1", &[]);
    assert_eq!((dev.get("/healthz").status, dev.get("/readyz").body.as_str()), (200, "ready\n"));
    assert!(dev.get("/metrics").body.contains("rtcrm_events_total"));
    let index = dev.get("/");
    assert_eq!(index.status, 200);
    assert_eq!(index.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(index.body.contains("<title>rtcrm console</title>"));
    let csp = index.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    for (path, kind) in [("/console.js", "text/javascript"), ("/controls.js", "text/javascript"), ("/console.css", "text/css"), ("/favicon.svg", "image/svg+xml")] {
        let r = dev.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.header("content-type").unwrap().starts_with(kind), "{path}: {r:?}");
    }
    // Nothing in the console refers to another origin.
    for path in ["/", "/console.js", "/controls.js", "/console.css"] {
        assert!(!dev.get(path).body.contains("://"), "{path} refers to another origin");
    }
    let info = dev.get("/api/info").json();
    assert_eq!((info["auth_required"].as_bool(), info["ready"].as_bool()), (Some(false), Some(true)));
    assert_eq!(info["topics"]["triggers"], "crm-triggers");
    let examples = dev.get("/api/examples").json();
    assert_eq!(examples["campaign"]["campaign_id"], 4711);
    assert_eq!(examples["event"]["player_id"], 12345);
    // Unknown paths and methods answer JSON errors.
    assert!(dev.get("/nope").error(404).contains("/api"));
    dev.req("PUT", "/api/campaigns", &[], None).error(405);
    // A page served from another name (DNS rebinding) is refused on a loopback bind.
    let r = dev.req("GET", "/api/campaigns", &[("Host", "evil.example:8080")], None);
    assert!(r.error(403).contains("evil.example"), "{r:?}");
    // Unless it is a loopback name.
    assert_eq!(dev.req("GET", "/api/info", &[("Host", "localhost:8080")], None).status, 200);
}

#[test]
fn campaigns_compile_events_and_the_trigger_stream() {
    let dev = Dev::start("127.0.0.1", &[]);

    // GET /api/campaigns: the example campaign, exactly as received, with its counters.
    let list = dev.get("/api/campaigns").json();
    let c = &list["campaigns"][0];
    assert_eq!((c["campaign_id"].as_i64(), c["state"].as_str()), (Some(4711), Some("active")));
    let example: Value = serde_json::from_str(include_str!("../../examples/campaigns/campaign-4711.json")).unwrap();
    assert_eq!(c["campaign"], example);
    assert_eq!(c["error"], Value::Null);
    for key in ["evaluations", "matches", "errors", "errors_total", "fuel_p50", "fuel_p99", "last_match_at"] {
        assert!(c["counters"].get(key).is_some(), "counters.{key} missing: {c}");
    }
    // fuel, memory, deadline, trap, exception, event (a failure the event caused), capacity (the
    // sandbox's budget of instances spent, the host's fault; neither counts toward quarantine) and
    // state (a per-player state over its size).
    assert_eq!(c["counters"]["errors"].as_object().unwrap().len(), 8, "every error kind");
    // Per-player controls (spec §12): none given, nothing counted.
    assert_eq!(c["controls"], json!({}));
    assert_eq!(
        [&c["counters"]["control_matches"], &c["counters"]["suppressed"], &c["counters"]["timers_pending"], &c["counters"]["state_entries"], &c["counters"]["state_bytes"]],
        [&json!(0), &json!({"cooldown": 0, "cap": 0, "count": 0}), &json!(0), &json!(0), &json!(0)]
    );
    // GET /api/campaigns/{id}/players/{player}: 4711 keeps no per-player state.
    let p = dev.get("/api/campaigns/4711/players/12345").json();
    assert_eq!((&p["found"], &p["state"], &p["group"]["group"]), (&json!(false), &Value::Null, &json!("live")), "{p}");
    assert!(p["message"].as_str().unwrap().contains("campaign 4711 keeps no per-player state"), "{p}");
    assert_eq!(dev.get("/api/campaigns/999/players/1").error(404), "campaign 999 is unknown");
    // GET /api/campaigns/{id}
    assert_eq!(dev.get("/api/campaigns/4711").json()["campaign"], example);
    assert!(dev.get("/api/campaigns/999").error(404).contains("999"));
    assert!(dev.get("/api/campaigns/abc").error(400).contains("abc"));

    // POST /api/compile
    assert_eq!(dev.post("/api/compile", r#"{"source":"e => e.data.result === 'win'"}"#).json(), json!({"ok": true}));
    let r = dev.post("/api/compile", &json!({"source": "function(event) {\n  return event.data.result === ;\n}"}).to_string());
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!((v["ok"].as_bool(), v["error"]["line"].as_u64()), (Some(false), Some(2)), "{v}");
    assert!(v["error"]["column"].as_u64().unwrap() > 1 && v["error"]["message"].as_str().unwrap().contains("SyntaxError"), "{v}");
    let v = dev.post("/api/compile", r#"{"source":"42"}"#).json();
    assert_eq!((v["ok"].as_bool(), &v["error"]["line"]), (Some(false), &Value::Null), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("function"), "{v}");
    // The JavaScript itself as the body works too.
    assert_eq!(dev.post("/api/compile", "function(event) { return event.getData().get('result') === 'loss' }").json(), json!({"ok": true}));
    let v = dev.post("/api/compile", "function(event) {\n  return event.data.result === ;\n}").json();
    assert_eq!((v["ok"].as_bool(), v["error"]["line"].as_u64(), v["error"]["column"].as_u64()), (Some(false), Some(2), Some(32)), "{v}");
    let v = dev.post("/api/compile", "{}").json();
    assert_eq!(v["ok"].as_bool(), Some(false), "an empty block is no function: {v}");
    assert!(dev.post("/api/compile", r#"{"source": 1}"#).error(400).contains("must be a string"));

    // POST /api/campaigns: invalid ones are refused with the reason, before anything is produced.
    assert!(dev.post("/api/campaigns", "{\"campaign_id\": 77,").error(400).contains("not valid JSON"));
    assert!(dev.post("/api/campaigns", "[1, 2]").error(400).contains("JSON object"));
    let r = dev.post("/api/campaigns", r#"{"campaign_id":77,"enabled":true,"event_name":"fight","filter":"e => true"}"#);
    assert!(r.error(400).contains("game is missing"));
    assert_eq!(r.json()["campaign_id"], 77);
    let r = dev.post("/api/campaigns", r#"{"campaign_id":77,"enabled":true,"game":"foe","event_name":"fight","filter":"e => {"}"#);
    assert!(r.error(400).starts_with("filter: SyntaxError"), "{r:?}");
    assert_eq!(r.json()["line"], 1);
    assert!(r.json()["column"].is_u64());
    assert_eq!(dev.get("/api/campaigns/77").status, 404, "a refused campaign is not produced");

    // A valid campaign is produced to the campaigns topic and becomes active.
    let campaign = r#"{"campaign_id":77,"enabled":true,"game":"foe","event_name":"fight","filter":"e => e.data.result === 'win'","owner":"api-test"}"#;
    let r = dev.post("/api/campaigns", campaign);
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!((r.json()["ok"].as_bool(), r.json()["campaign_id"].as_i64(), r.json()["topic"].as_str()), (Some(true), Some(77), Some("crm-campaigns")));
    let view = dev.wait_state(77, "active");
    assert_eq!(view["campaign"]["owner"], "api-test", "unknown fields are kept");

    // POST /api/events: refused when not a JSON object, with a message.
    assert!(dev.post("/api/events", r#"{"game": "foe", }"#).error(400).contains("not valid JSON"));
    let r = dev.post("/api/events", "{\n  \"game\": 1,,\n}");
    r.error(400);
    assert_eq!(r.json()["line"], 2, "the position of the JSON error");
    assert!(dev.post("/api/events", "[]").error(400).contains("must be a JSON object, not an array"));
    assert!(dev.post("/api/events", "").error(400).contains("empty"));

    // GET /api/triggers/stream delivers the trigger of an event sent after it opened.
    let mut sse = Sse::open(dev.addr);
    let r = dev.post("/api/events", &example_event(4242, "win"));
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["topic"], "events-valid");
    let data = sse.next_data().expect("a trigger on the stream");
    let trigger: Value = serde_json::from_str(&data).unwrap();
    assert_eq!((trigger["campaign"]["campaign_id"].as_i64(), trigger["event"]["player_id"].as_i64()), (Some(77), Some(4242)), "{trigger}");
    assert_eq!(trigger["trigger_id"], "77:api-test-4242-win");
    // The example campaign matches the example event too.
    assert_eq!(dev.post("/api/events", include_str!("../../examples/events/fight-loss.json")).status, 202);
    let trigger: Value = serde_json::from_str(&sse.next_data().unwrap()).unwrap();
    assert_eq!((trigger["campaign"]["campaign_id"].as_i64(), trigger["event"]["player_id"].as_i64()), (Some(4711), Some(12345)));

    // The counters moved.
    let counters = dev.get("/api/campaigns/77").json()["counters"].clone();
    assert!(counters["evaluations"].as_u64().unwrap() >= 2 && counters["matches"].as_u64().unwrap() >= 1, "{counters}");
    assert!(counters["fuel_p50"].as_u64().unwrap() > 0 && counters["fuel_p99"].as_u64() >= counters["fuel_p50"].as_u64(), "{counters}");
    assert!(counters["last_match_at"].as_str().unwrap().ends_with('Z'), "{counters}");
    assert_eq!(counters["errors_total"], 0);

    // A campaign whose filter throws counts its errors by kind.
    let r = dev.post("/api/campaigns", r#"{"campaign_id":78,"enabled":true,"game":"foe","event_name":"fight","filter":"e => { throw new Error('boom') }"}"#);
    assert_eq!(r.status, 202, "{r:?}");
    dev.wait_state(78, "active");
    assert_eq!(dev.post("/api/events", &example_event(5, "loss")).status, 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    while dev.get("/api/campaigns/78").json()["counters"]["errors"]["exception"] != 1 {
        assert!(Instant::now() < deadline, "{}", dev.get("/api/campaigns/78").body);
        std::thread::sleep(Duration::from_millis(100));
    }
    let trigger: Value = serde_json::from_str(&sse.next_data().unwrap()).unwrap();
    assert_eq!(trigger["trigger_id"], "4711:api-test-5-loss", "only the example campaign matched");

    // DELETE /api/campaigns/{id}: a tombstone.
    let r = dev.delete("/api/campaigns/77");
    assert_eq!((r.status, r.json()["campaign_id"].as_i64()), (202, Some(77)), "{r:?}");
    let view = dev.wait_state(77, "deleted");
    assert_eq!(view["campaign"], Value::Null);
    assert!(dev.delete("/api/campaigns/77").error(404).contains("already deleted"));
    assert!(dev.delete("/api/campaigns/123456").error(404).contains("unknown"));
    assert!(dev.delete("/api/campaigns/x").error(400).contains("not an integer"));
    // The list shows every id seen, deleted ones too.
    let states: Vec<(i64, String)> = dev.get("/api/campaigns").json()["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["campaign_id"].as_i64().unwrap(), c["state"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(states, [(77, "deleted".to_owned()), (78, "active".to_owned()), (4711, "active".to_owned())]);

    // A cross-site POST (a form on another page) is refused; the same origin is fine.
    let r = dev.req("POST", "/api/events", &[("Origin", "http://evil.example")], Some(b"{}"));
    assert!(r.error(403).contains("cross-origin"));
    assert_eq!(dev.req("POST", "/api/events", &[("Origin", "http://127.0.0.1")], Some(b"{}")).status, 202);

    // SIGTERM with a trigger stream open: the stream ends and the process exits 0.
    let pid = dev.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    // (keep-alive comments come every 15 s: a stream still open after 10 s fails the read)
    sse.reader.get_ref().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let stopping = Instant::now();
    assert_eq!(sse.next_data(), None, "the stream ends at shutdown");
    assert!(stopping.elapsed() < Duration::from_secs(9), "the stream did not end at shutdown");
    let mut dev = dev;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = dev.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "rtcrm dev did not stop within 30 s of SIGTERM; log:\n{}", dev.log_text());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}; log:\n{}", dev.log_text());
}

#[test]
fn bodies_over_the_limit_are_refused_with_413() {
    let dev = Dev::start("127.0.0.1", &[]);
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(300 * 1024));
    for path in ["/api/events", "/api/campaigns", "/api/compile"] {
        // Declared by Content-Length and sent whole.
        let message = dev.post(path, &big).error(413);
        assert!(message.contains("256 KiB"), "{message}");
    }
    // Declared, not sent: refused without the body.
    let mut stream = TcpStream::connect(dev.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    head(&mut stream, "POST", "/api/events", &[("Content-Type", "application/json")], Some(10 << 20)).unwrap();
    let (status, _) = read_head(&mut BufReader::new(stream)).unwrap();
    assert_eq!(status, 413);
    // Chunked, without a length: refused once past the limit.
    let mut stream = TcpStream::connect(dev.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    head(&mut stream, "POST", "/api/events", &[("Transfer-Encoding", "chunked")], None).unwrap();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..300 {
                if stream.write_all(format!("400\r\n{}\r\n", "y".repeat(1024)).as_bytes()).is_err() {
                    return;
                }
            }
            let _ = stream.write_all(b"0\r\n\r\n");
        })
    };
    let (status, _) = read_head(&mut BufReader::new(stream)).unwrap();
    assert_eq!(status, 413);
    writer.join().unwrap();
    // Just under the limit is fine.
    let fits = format!("{{\"pad\":\"{}\"}}", "x".repeat(200 * 1024));
    assert_eq!(dev.post("/api/events", &fits).status, 202);
}

#[test]
fn off_loopback_mutating_requests_need_the_configured_token() {
    // Bound to every address, without a token: reads work, POST and DELETE are refused.
    let open = Dev::start("0.0.0.0", &[]);
    assert_eq!(open.get("/api/campaigns").status, 200);
    assert_eq!(open.get("/api/info").json()["auth_required"], true);
    for r in [
        open.post("/api/compile", r#"{"source":"e => true"}"#),
        open.post("/api/events", &example_event(1, "loss")),
        open.post("/api/campaigns", include_str!("../../examples/campaigns/campaign-4711.json")),
        open.delete("/api/campaigns/4711"),
        open.req("POST", "/api/events", &[("Authorization", "Bearer anything")], Some(b"{}")),
    ] {
        let message = r.error(401);
        assert!(message.contains("token must be configured"), "{message}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    drop(open);

    // With --api-token: refused without it or with a wrong one, accepted with it.
    let dev = Dev::start("0.0.0.0", &["--api-token", "s3cret-token"]);
    assert_eq!(dev.get("/api/campaigns").status, 200, "reads need no token");
    assert!(dev.post("/api/events", "{}").error(401).contains("Authorization: Bearer"));
    assert!(dev.req("POST", "/api/events", &[("Authorization", "Bearer nope")], Some(b"{}")).error(401).contains("wrong"));
    assert!(dev.req("DELETE", "/api/campaigns/4711", &[("Authorization", "Basic czNjcmV0")], None).error(401).contains("Bearer"));
    let auth = [("Authorization", "Bearer s3cret-token"), ("Content-Type", "application/json")];
    let ok = dev.req("POST", "/api/compile", &auth, Some(br#"{"source":"e => true"}"#));
    assert_eq!(ok.json()["ok"], true, "{ok:?}");
    assert_eq!(dev.req("POST", "/api/events", &auth, Some(example_event(2, "loss").as_bytes())).status, 202);
    assert_eq!(dev.req("DELETE", "/api/campaigns/4711", &auth, None).status, 202);
    dev.wait_state(4711, "deleted");
    // Any Host is fine off loopback (the token protects the mutating requests).
    assert_eq!(dev.req("GET", "/api/info", &[("Host", "rtcrm.internal:8080")], None).status, 200);
}
