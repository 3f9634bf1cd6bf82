//! `rtcrm campaign put | delete | list` against a running cluster: a campaign published from a
//! file goes live and triggers, `list` shows it with its state, a broken campaign is refused
//! before anything is published, and `delete` stops it; `put` and `delete` wait for the
//! processor's verdict (or say that none came); `logs` shows a filter's output and errors.

use rtcrm_integration_tests::*;
use std::process::{Command, Output};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn cli(t: &Topics, args: &[&str]) -> Output {
    Command::new(rtcrm_bin())
        .args(["campaign"])
        .args(args)
        .args(["--bootstrap-servers", &broker(), "--campaign-topic", &t.campaigns, "--status-topic", &t.status])
        .args(["--filter-log-topic", &t.logs])
        .env("NO_COLOR", "1")
        .output()
        .expect("rtcrm runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn put_list_and_delete_a_campaign() {
    let t = Topics::new("cli");
    let mut p = Processor::start(&t.args());
    let mut status = Reader::new(&t.status);

    let out = cli(&t, &["put", workspace_dir().join("examples/campaigns/campaign-4711.json").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("campaign 4711 active"), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("campaign 4711 published to "), "{}", text(&out.stderr));
    wait_status(&mut status, 4711, "active", WAIT);

    produce(&t.events, &[Msg::keyed("12345", seed_event("cli-1", "loss").to_string())]);
    let mut triggers = Reader::new(&t.triggers);
    triggers.wait_for("the trigger of campaign 4711", WAIT, |r| r.json()["campaign"]["campaign_id"] == 4711);

    let out = cli(&t, &["list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    let row = listing.lines().find(|l| l.trim_start().starts_with("4711")).unwrap_or_else(|| panic!("4711 listed:\n{listing}"));
    assert!(row.contains("active") && row.contains("foe") && row.contains("fight"), "{row}");

    // A filter with a syntax error is refused locally, with its line and column; nothing is sent.
    let bad = target_dir().join(format!("cli-bad-{}.json", unique_suffix()));
    std::fs::write(&bad, r#"{"campaign_id":4712,"enabled":true,"game":"foe","event_name":"fight","filter":"function(event) { return event.data.result === ; }"}"#).unwrap();
    let out = cli(&t, &["put", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("line 1, column 48"), "{}", text(&out.stderr));

    let out = cli(&t, &["delete", "4711"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    wait_status(&mut status, 4711, "deleted", WAIT);
    let out = cli(&t, &["list"]);
    assert!(!text(&out.stdout).lines().any(|l| l.trim_start().starts_with("4711")), "{}", text(&out.stdout));
    assert!(!text(&cli(&t, &["list"]).stdout).contains("4712"), "the refused campaign was never published");

    assert_eq!(p.sigterm().code(), Some(0));
}

#[test]
fn put_prints_the_verdict_or_says_that_none_came() {
    let t = Topics::new("cli-wait");
    let campaign = workspace_dir().join("examples/campaigns/campaign-4711.json");
    let campaign = campaign.to_str().unwrap();

    // No processor on these topics: published, but no verdict within the wait.
    let started = std::time::Instant::now();
    let out = cli(&t, &["put", campaign, "--wait-timeout", "3"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    let err = text(&out.stderr);
    assert!(err.contains("campaign 4711 is published, but no processor reported on it within 3 s"), "{err}");
    assert!(err.contains(&t.campaigns) && err.contains(&t.status), "{err}");

    // --no-wait: published, at once.
    let out = cli(&t, &["put", campaign, "--no-wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("campaign 4711 published to "), "{}", text(&out.stdout));

    // With a processor: the verdict, from the status message of exactly this version.
    let mut p = Processor::start(&t.args());
    let out = cli(&t, &["put", campaign]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.starts_with("campaign 4711 active (reported by "), "{said}");
    let out = cli(&t, &["delete", "4711"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("campaign 4711 deleted (reported by "), "{}", text(&out.stdout));
    assert_eq!(p.sigterm().code(), Some(0));
}

#[test]
fn logs_show_a_filters_output_and_errors() {
    let t = Topics::new("cli-logs");
    let mut p = Processor::start(&t.args());
    let chatty = target_dir().join(format!("cli-chatty-{}.json", unique_suffix()));
    std::fs::write(
        &chatty,
        serde_json::json!({
            "campaign_id": 4720, "enabled": true, "game": "foe", "event_name": "fight",
            "filter": "e => { if (e.data.result === 'win') throw new Error('no wins here'); console.log('player ' + e.player_id + ' lost'); return true }"
        })
        .to_string(),
    )
    .unwrap();
    let out = cli(&t, &["put", chatty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    produce(&t.events, &[Msg::keyed("12345", seed_event("logs-1", "loss").to_string())]);
    produce(&t.events, &[Msg::keyed("12345", seed_event("logs-2", "win").to_string())]);
    let mut triggers = Reader::new(&t.triggers);
    triggers.wait_for("the trigger of campaign 4720", WAIT, |r| r.json()["campaign"]["campaign_id"] == 4720);

    let logs_args = ["logs", "4720"];
    let deadline = std::time::Instant::now() + WAIT;
    let listing = loop {
        let out = cli(&t, &logs_args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let listing = text(&out.stdout);
        if listing.contains(" error ") || std::time::Instant::now() > deadline {
            break listing;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let lines: Vec<&str> = listing.lines().collect();
    assert!(lines.iter().any(|l| l.ends_with(" stdout: player 12345 lost")), "{listing}");
    let error = lines.iter().find(|l| l.contains(" error exception")).unwrap_or_else(|| panic!("no error line:\n{listing}"));
    assert!(error.contains("(event at partition 0, offset 1)") && error.contains("no wins here"), "{error}");
    // Each line names when and which instance.
    assert!(lines.iter().all(|l| l.len() > 24 && l.as_bytes()[4] == b'-' && l.contains('T')), "{listing}");

    // --follow prints what comes next.
    let mut follow = std::process::Command::new(rtcrm_bin())
        .args(["campaign", "logs", "4720", "--follow", "-n", "0", "--bootstrap-servers", &broker(), "--filter-log-topic", &t.logs])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let mut event = seed_event("logs-3", "loss");
    event["player_id"] = 777.into();
    produce(&t.events, &[Msg::keyed("777", event.to_string())]);
    let line = rx.recv_timeout(WAIT).expect("campaign logs --follow printed the new line");
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(line.ends_with(" stdout: player 777 lost"), "{line}");
    assert_eq!(p.sigterm().code(), Some(0));
}
