//! `rtcrm dev`: one command starts a mock Kafka broker and the processor with campaign 4711;
//! the README's kcat steps (done here with rdkafka, and with kcat itself when installed) give the
//! trigger.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rtcrm_integration_tests::*;

#[test]
fn dev_mode_readme_walkthrough() {
    let mut dev = Processor::builder("dev").wait_ready(false).start();
    let t0 = Instant::now();
    let bootstrap = loop {
        dev.assert_running();
        let found = dev.stdout_lines().iter().find_map(|l| {
            let i = l.find("bootstrap:")?;
            l[i + "bootstrap:".len()..].split_whitespace().next().map(str::to_string)
        });
        if let Some(b) = found {
            break b;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            panic!(
                "rtcrm dev printed no `bootstrap: 127.0.0.1:PORT` line within 60 s; stdout: {:?}\nlog: {}",
                dev.stdout_lines(),
                dev.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(bootstrap.starts_with("127.0.0.1:"), "bootstrap address {bootstrap:?}");
    dev.wait_ready(Duration::from_secs(60));
    let out = dev.stdout_lines().join("\n");
    assert!(
        out.contains(&format!("kcat -b {bootstrap}")),
        "rtcrm dev should print ready-to-paste kcat commands for {bootstrap}; stdout:\n{out}"
    );

    // kcat -b … -t crm-campaigns -P ; kcat -b … -t events-valid -P
    produce_to(&bootstrap, "crm-campaigns", &[Msg::keyless(SEED_CAMPAIGN)]);
    produce_to(&bootstrap, "events-valid", &[Msg::keyless(SEED_EVENT)]);

    // kcat -b … -t crm-triggers -C -o beginning -u
    let mut triggers = Reader::with_bootstrap(&bootstrap, "crm-triggers");
    let rec = triggers.wait_for("the trigger of campaign 4711", Duration::from_secs(30), |r| {
        r.payload
            .as_deref()
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
            .is_some_and(|v| v["campaign"]["campaign_id"] == 4711)
    });
    let v = rec.json();
    assert_eq!(v["event"], serde_json::from_str::<serde_json::Value>(SEED_EVENT).unwrap(), "trigger.event");
    assert_eq!(rec.key_str().as_deref(), Some("12345"), "trigger key");

    if std::path::Path::new("/usr/bin/kcat").exists() {
        let cmd = format!("kcat -b {bootstrap} -t crm-triggers -C -o beginning -u");
        let mut kcat = Command::new("/usr/bin/kcat")
            .args(["-b", &bootstrap, "-t", "crm-triggers", "-C", "-o", "beginning", "-u"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kcat");
        let stdout = kcat.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        let mut ok = false;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let hit = serde_json::from_str::<serde_json::Value>(&line)
                        .is_ok_and(|v| v["campaign"]["campaign_id"] == 4711 && v["event"]["player_id"] == 12345);
                    seen.push(line);
                    if hit {
                        ok = true;
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = kcat.kill();
        let _ = kcat.wait();
        assert!(ok, "`{cmd}` printed no trigger of campaign 4711 within 30 s; it printed: {seen:?}");
    } else {
        println!("kcat is not installed: skipped the kcat consume step");
    }

    let st = dev.sigterm();
    assert!(st.success(), "rtcrm dev must exit 0 on SIGTERM, got {st}");
}
