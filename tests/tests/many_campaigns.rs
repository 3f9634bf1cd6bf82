//! 10 campaigns over 3 games × 4 event names (varied filters, date windows with offsets, open
//! bounds, a disabled one, one whose window excludes every event) and 10,000 deterministic
//! pseudo-random events. The expected (campaign, event) pairs are computed here in Rust from the
//! same rules; the triggers must be exactly that set.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rtcrm_integration_tests::*;
use serde_json::Value;

const EVENTS: usize = 10_000;

#[derive(Clone, Copy)]
enum Bound {
    Absent,
    Null,
    At(&'static str),
}

struct Camp {
    id: i64,
    enabled: bool,
    game: &'static str,
    event_name: &'static str,
    start: Bound,
    end: Bound,
    filter: &'static str,
    /// The same filter, in Rust.
    check: fn(&Value) -> bool,
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn campaigns() -> Vec<Camp> {
    use Bound::*;
    vec![
        Camp {
            id: 101, enabled: true, game: "foe", event_name: "fight",
            start: At("2023-09-01T10:00:00.00Z"), end: At("2023-12-01T10:00:00.00Z"),
            filter: "function(event) { return event.getData().get('result') === 'loss' }",
            check: |e| e["data"]["result"] == "loss",
        },
        Camp {
            id: 102, enabled: true, game: "foe", event_name: "purchase",
            start: Absent, end: At("2023-11-15T00:00:00Z"),
            filter: "(e) => e.data.amount >= 50 && e.market === 'de'",
            check: |e| num(&e["data"]["amount"]) >= 50.0 && e["market"] == "de",
        },
        Camp {
            id: 103, enabled: false, game: "foe", event_name: "login",
            start: Absent, end: Absent,
            filter: "function(e) { return true }",
            check: |_| true,
        },
        Camp {
            id: 104, enabled: true, game: "elvenar", event_name: "level_up",
            start: At("2023-10-01T00:00:00+02:00"), end: Null,
            filter: "function(e) { return e.eventName === 'level_up' && e.getData().get('level') % 10 === 0 }",
            check: |e| e["data"]["level"].as_i64().is_some_and(|l| l % 10 == 0),
        },
        Camp {
            id: 105, enabled: true, game: "elvenar", event_name: "fight",
            start: At("2022-01-01T00:00:00Z"), end: At("2022-12-31T23:59:59.999Z"),
            filter: "e => true",
            check: |_| true,
        },
        Camp {
            id: 106, enabled: true, game: "elvenar", event_name: "purchase",
            start: Null, end: Null,
            filter: "function(event) { var d = event.getData(); return d.containsKey('coupon') && d.get('amount') > 20; }",
            check: |e| e["data"].as_object().is_some_and(|d| d.contains_key("coupon")) && num(&e["data"]["amount"]) > 20.0,
        },
        Camp {
            id: 107, enabled: true, game: "goo", event_name: "login",
            start: At("2023-09-15T00:00:00Z"), end: At("2023-11-30T23:59:59Z"),
            filter: "e => ['de','at','ch'].indexOf(e.market) >= 0 && e.data.platform === 'ios'",
            check: |e| ["de", "at", "ch"].iter().any(|m| e["market"] == *m) && e["data"]["platform"] == "ios",
        },
        Camp {
            id: 108, enabled: true, game: "goo", event_name: "fight",
            start: Absent, end: Absent,
            filter: "function(e) { return e.getPlayerId() % 7 === 0 && e.data.result !== 'draw' }",
            check: |e| e["player_id"].as_i64().is_some_and(|p| p % 7 == 0) && e["data"]["result"] != "draw",
        },
        Camp {
            id: 109, enabled: true, game: "foe", event_name: "fight",
            start: At("2023-11-01T00:00:00Z"), end: Absent,
            filter: "e => e.data.duration_ms > 30000",
            check: |e| num(&e["data"]["duration_ms"]) > 30000.0,
        },
        Camp {
            id: 110, enabled: true, game: "goo", event_name: "purchase",
            start: At("2023-10-01T00:00:00+01:00"), end: At("2023-12-31T00:00:00+01:00"),
            filter: "function(e) { return /^goo-backend-[12]\\./.test(e.hostname) && e.data.amount > 5; }",
            check: |e| {
                let h = e["hostname"].as_str().unwrap_or("");
                (h.starts_with("goo-backend-1.") || h.starts_with("goo-backend-2.")) && num(&e["data"]["amount"]) > 5.0
            },
        },
    ]
}

impl Camp {
    fn json(&self) -> Value {
        let mut v = json!({
            "campaign_id": self.id, "enabled": self.enabled, "game": self.game,
            "event_name": self.event_name, "filter": self.filter,
        });
        for (k, b) in [("start_date", self.start), ("end_date", self.end)] {
            match b {
                Bound::Absent => {}
                Bound::Null => {
                    v[k] = Value::Null;
                }
                Bound::At(s) => {
                    v[k] = Value::from(s);
                }
            }
        }
        v
    }
    fn bound(b: Bound) -> Option<i64> {
        match b {
            Bound::At(s) => Some(ts(s)),
            _ => None,
        }
    }
    fn matches(&self, e: &Value, t: i64) -> bool {
        self.enabled
            && e["game"] == self.game
            && e["event_name"] == self.event_name
            && Camp::bound(self.start).is_none_or(|s| s < t)
            && Camp::bound(self.end).is_none_or(|x| t < x)
            && (self.check)(e)
    }
}

/// The events, and for each its effective time (None = wall clock).
fn events(camps: &[Camp]) -> Vec<(Value, Option<i64>)> {
    let mut rng = Rng::new(0x5EED_4711);
    let games = ["foe", "elvenar", "goo"];
    let names = ["fight", "login", "purchase", "level_up"];
    let markets = ["de", "at", "ch", "fr", "us", "pl", "nl"];
    let offsets = [0, 0, 0, 0, 0, 0, 0, 60, 120, -300, 330];
    let lo = ts("2023-08-15T00:00:00Z");
    let hi = ts("2024-01-15T00:00:00Z");
    let bounds: Vec<i64> = camps.iter().flat_map(|c| [Camp::bound(c.start), Camp::bound(c.end)]).flatten().collect();
    let mut out = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let game = if rng.chance(0.02) { "forge" } else { *rng.pick(&games) };
        let name = if rng.chance(0.02) { "logout" } else { *rng.pick(&names) };
        let frac = *rng.pick(&[0u32, 2, 3, 6]);
        let mut t = if rng.chance(0.02) {
            // Exactly on a campaign bound (strict comparison: no match), or 1 ms inside/outside.
            rng.pick(&bounds) + rng.range(-1, 1)
        } else {
            rng.range(lo, hi)
        };
        t -= match frac {
            0 => t.rem_euclid(1000),
            2 => t.rem_euclid(10),
            _ => 0,
        };
        let off = *rng.pick(&offsets);
        let mut e = json!({
            "schema_version": "2023110110010101",
            "event_id": format!("mc-{i:05}"),
            "system_type": "game",
            "system_name": format!("{game}-backend"),
            "game": game,
            "market": *rng.pick(&markets),
            "event_type": if name == "purchase" { "payment" } else { "progress" },
            "event_name": name,
            "event_scope": "user",
            "hostname": format!("{game}-backend-{}.ig.com", rng.range(1, 4)),
            "context": {"session": format!("s-{}", rng.below(1 << 32)), "ab_group": *rng.pick(&["a", "b"])},
            "ingest_seq": i,
        });
        // player_id absent only where no filter looks at it.
        let no_player = matches!((game, name), ("elvenar", "purchase") | ("foe", "fight")) && rng.chance(0.05);
        if !no_player {
            e["player_id"] = Value::from(rng.range(1, 99_999));
        }
        let received = t + rng.range(0, 5_000);
        let effective = match rng.below(100) {
            0..=89 => {
                e["created_at"] = fmt_rfc3339(t, frac, off).into();
                e["received_at"] = fmt_rfc3339(received - received.rem_euclid(1000), 0, 0).into();
                Some(t)
            }
            90..=96 => {
                e["received_at"] = fmt_rfc3339(t, frac, off).into();
                Some(t)
            }
            _ => None, // neither: wall clock
        };
        let data = match name {
            "fight" => json!({
                "result": *rng.pick(&["win", "loss", "draw"]),
                "duration_ms": rng.range(1_000, 60_000),
                "opponent": format!("npc-{}", rng.below(50)),
            }),
            "login" => json!({"platform": *rng.pick(&["ios", "android", "web"]), "version": format!("1.{}.{}", rng.below(5), rng.below(20))}),
            "purchase" => {
                let amount = if rng.chance(0.5) {
                    Value::from(rng.range(1, 100))
                } else {
                    Value::from(rng.range(100, 9_999) as f64 / 100.0)
                };
                let mut d = json!({"amount": amount, "currency": "EUR"});
                match rng.below(100) {
                    0..=29 => d["coupon"] = "SAVE10".into(),
                    30..=34 => d["coupon"] = Value::Null,
                    _ => {}
                }
                d
            }
            "level_up" => json!({"level": rng.range(1, 60)}),
            _ => json!({}),
        };
        e["data"] = data;
        out.push((e, effective));
    }
    out
}

#[test]
fn ten_campaigns_ten_thousand_events() {
    let camps = campaigns();
    let evs = events(&camps);
    let t = Topics::new("many");

    let mut p = Processor::start(&t.args());
    let mut status = Reader::new(&t.status);
    let camp_msgs: Vec<Msg> = camps.iter().map(|c| Msg::keyed(c.id.to_string(), c.json().to_string())).collect();
    produce(&t.campaigns, &camp_msgs);
    for c in &camps {
        wait_status(&mut status, c.id, "active", Duration::from_secs(30));
    }

    let msgs: Vec<Msg> = evs
        .iter()
        .map(|(e, _)| match e["player_id"].as_i64() {
            Some(pid) => Msg::keyed(pid.to_string(), e.to_string()),
            None => Msg::keyless(e.to_string()),
        })
        .collect();
    let t_produce = std::time::Instant::now();
    produce(&t.events, &msgs);

    // Expected, computed independently (wall clock for events without a time).
    let now = now_ms();
    let mut expected = BTreeSet::new();
    for (e, eff) in &evs {
        let tt = eff.unwrap_or(now);
        for c in &camps {
            if c.matches(e, tt) {
                expected.insert((c.id, e["event_id"].as_str().unwrap().to_string()));
            }
        }
    }
    let mut per: BTreeMap<i64, usize> = BTreeMap::new();
    for (c, _) in &expected {
        *per.entry(*c).or_default() += 1;
    }
    println!("expected {} triggers: {per:?}", expected.len());
    for id in [101, 102, 104, 106, 107, 108, 109, 110] {
        assert!(per.get(&id).copied().unwrap_or(0) > 10, "test data gives campaign {id} too few matches: {per:?}");
    }

    let mut triggers = Reader::new(&t.triggers);
    let done = triggers.read_until(|r| covers(r, &expected), Duration::from_secs(3), Duration::from_secs(120));
    println!(
        "{} trigger messages {:.1?} after producing 10,000 events (complete: {done})",
        triggers.records.len(),
        t_produce.elapsed()
    );
    p.assert_running();
    let (got, dups) = trigger_pairs(&triggers.records);
    println!("duplicates: {dups}");
    let diff = diff_pairs(&expected, &got);
    assert!(diff.is_empty(), "the triggers differ from the expected set:\n{diff}");

    // Each trigger echoes the campaign and the whole event, keyed by the player id.
    let by_id: BTreeMap<&str, &Value> = evs.iter().map(|(e, _)| (e["event_id"].as_str().unwrap(), e)).collect();
    let camp_json: BTreeMap<i64, Value> = camps.iter().map(|c| (c.id, c.json())).collect();
    for tr in parse_triggers(&triggers.records) {
        let ev = by_id[tr.event_id.as_str()];
        assert_eq!(&tr.value["event"], ev, "trigger.event must be the event as received");
        assert_eq!(tr.value["campaign"], camp_json[&tr.campaign_id], "trigger.campaign must be the campaign as received");
        let want_key = ev["player_id"].as_i64().map(|p| p.to_string()).unwrap_or_default();
        assert_eq!(
            tr.key.clone().unwrap_or_default(),
            want_key,
            "trigger key must be the player id as text (empty without one) for event {}",
            tr.event_id
        );
        assert!(tr.value["trigger_id"].as_str().is_some_and(|s| !s.is_empty()), "trigger_id missing: {}", tr.value);
    }
    let total = p.metric("rtcrm_events_total").unwrap_or(0.0);
    assert!(total >= EVENTS as f64, "rtcrm_events_total = {total}, expected at least {EVENTS}");
}
