//! Failures caused by the event, not the filter (spec §7): the parser refuses events over the
//! nesting and size limits, an evaluation of such an event is an `event` error that never counts
//! against the campaign, and events within the limits are read whole by the runtime.

use crate::{filter, sandbox};
use rtcrm_sandbox::{
    ErrorKind, EvalError, Event, EventError, EventLimits, HostLimits, Sandbox, SandboxConfig, UserLimits, MAX_SUPPORTED_EVENT_DEPTH,
};
use std::time::{Duration, Instant};

/// `{"d": [[...[1]...]]}` with `depth` levels in all (the event object is level 1).
fn nested(depth: usize) -> String {
    format!(r#"{{"game":"foe","d":{}1{}}}"#, "[".repeat(depth - 1), "]".repeat(depth - 1))
}

#[test]
fn an_event_nested_thousands_of_levels_deep_is_refused_by_the_parser() {
    let started = Instant::now();
    let err = Event::parse(nested(5_000).into_bytes()).unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(100), "{:?}", started.elapsed());
    assert!(matches!(err, EventError::TooDeep { max: 64 }), "{err}");
    assert_eq!(err.to_string(), "the event nests objects and arrays more than 64 levels deep (max_event_depth)");
    assert!(Event::parse(nested(64).into_bytes()).is_ok(), "64 levels are within the default");
    assert!(matches!(Event::parse(nested(65).into_bytes()), Err(EventError::TooDeep { max: 64 })));

    // The sandbox's configured limits.
    let limits = HostLimits::from_user_units(UserLimits { max_event_depth: Some(8), max_event_bytes: Some(200), ..UserLimits::default() }).unwrap();
    let sb = Sandbox::new(SandboxConfig::from_limits(&limits)).unwrap();
    assert!(sb.parse_event(nested(8).into_bytes()).is_ok());
    assert!(matches!(sb.parse_event(nested(9).into_bytes()), Err(EventError::TooDeep { max: 8 })));
    let err = sb.parse_event(format!(r#"{{"pad":"{}"}}"#, "p".repeat(300)).into_bytes()).unwrap_err();
    assert_eq!(err.to_string(), "the event is 310 bytes, over the limit of 200 bytes (max_event_bytes)");
}

#[test]
fn an_event_over_the_sandboxs_limits_is_the_events_fault_not_the_filters() {
    // Parsed under laxer limits than the sandbox's (say, by another component): the evaluation
    // refuses it as `event`, which never counts toward quarantine, and the filter does not run.
    let lax = EventLimits { max_bytes: 1 << 20, max_depth: 200 };
    let deep = Event::parse_with(nested(100).into_bytes(), &lax).unwrap();
    let mut f = filter("e => { throw new Error('the filter ran') }");
    let err = f.eval(&deep).unwrap_err();
    assert_eq!(err, EvalError::Event { reason: "the event nests objects and arrays more than 64 levels deep (max_event_depth)".into() });
    assert!(err.caused_by_event());
    assert_eq!(err.kind(), ErrorKind::Event);
    assert_eq!(err.kind().as_str(), "event");
    assert_eq!(f.rebuilds(), 0);
    let big = Event::parse_with(format!(r#"{{"pad":"{}"}}"#, "p".repeat(2 << 20)).into_bytes(), &EventLimits { max_bytes: 4 << 20, max_depth: 64 }).unwrap();
    assert!(f.eval(&big).unwrap_err().caused_by_event());
    // Every failure of the filter's own is not.
    for e in [EvalError::Fuel { limit: 1 }, EvalError::Exception("x".into()), EvalError::Trap("t".into()), EvalError::Exit { code: 1 }] {
        assert!(!e.caused_by_event(), "{e}");
    }
    let _ = sandbox();
}

#[test]
fn events_at_the_deepest_supported_nesting_are_read_whole_by_the_runtime() {
    let limits = EventLimits { max_bytes: 1 << 20, max_depth: MAX_SUPPORTED_EVENT_DEPTH };
    let sb = Sandbox::new(SandboxConfig { event_limits: limits, ..SandboxConfig::default() }).unwrap();
    let mut objects = String::new();
    for _ in 0..MAX_SUPPORTED_EVENT_DEPTH - 1 {
        objects.push_str(r#"{"a":"#);
    }
    objects.push('1');
    objects.push_str(&"}".repeat(MAX_SUPPORTED_EVENT_DEPTH - 1));
    for json in [nested(MAX_SUPPORTED_EVENT_DEPTH), format!(r#"{{"game":"foe","d":{objects}}}"#)] {
        let event = sb.parse_event(json.into_bytes()).expect("within the limit");
        let source = "e => { let v = e.d, n = 1; while (typeof v === 'object') { v = Array.isArray(v) ? v[0] : v.get('a'); n++ } return n === 512 && JSON.stringify(e).length > 1000 }";
        let mut f = sb.js_filter(&sb.compile_js(source).unwrap(), "deep", sb.limits()).unwrap();
        assert_eq!(f.eval(&event).map(|v| v.matched), Ok(true));
    }
}
