//! `rtcrm campaign put | delete | list` against a running cluster: a campaign published from a
//! file goes live and triggers, `list` shows it with its state, a broken campaign is refused
//! before anything is published, and `delete` stops it.

use rtcrm_integration_tests::*;
use std::process::{Command, Output};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn cli(t: &Topics, args: &[&str]) -> Output {
    Command::new(rtcrm_bin())
        .args(["campaign"])
        .args(args)
        .args(["--bootstrap-servers", &broker(), "--campaign-topic", &t.campaigns, "--status-topic", &t.status])
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
    assert!(text(&out.stdout).contains("campaign 4711 published"), "{}", text(&out.stdout));
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
