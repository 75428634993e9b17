use super::*;
use crate::telemetry::trace_context::parse_traceparent;
use http::HeaderMap;

fn telemetry(ratio: f64, b3: Option<B3Format>) -> Telemetry {
    Telemetry {
        metrics: Arc::new(ProxyMetrics::new("t".into())),
        spans: None,
        sample_ratio: ratio,
        b3,
        access_log: None,
        tap: Arc::default(),
    }
}

fn with(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_static(v));
    }
    h
}

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn a_valid_context_is_continued_with_a_fresh_parent_id_each_time() {
    let t = telemetry(0.0, None);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        let mut h = with(&[("traceparent", PARENT), ("tracestate", "congo=t61rcWkgMzE")]);
        let ids = propagate(&t, &mut h);
        let out = parse_traceparent(
            h.get(&TRACEPARENT)
                .map(|v| v.as_bytes())
                .unwrap_or_default(),
        )
        .expect("valid out");
        assert_eq!(out.trace_id, ids.trace_id);
        assert_eq!(
            hex(&out.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "trace id kept"
        );
        assert_eq!(
            ids.parent.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7"),
            "the span's parent is the caller"
        );
        assert_eq!(out.parent_id, ids.span_id, "our span is the new parent");
        assert_eq!(
            out.flags, FLAG_SAMPLED,
            "sampled kept, ratio ignored for a continued trace"
        );
        assert_eq!(
            h.get(&TRACESTATE).and_then(|v| v.to_str().ok()),
            Some("congo=t61rcWkgMzE")
        );
        seen.insert(out.parent_id);
    }
    assert_eq!(seen.len(), 3, "three calls, three parent ids");
}

#[test]
fn an_invalid_context_starts_a_new_trace_and_drops_tracestate() {
    let t = telemetry(1.0, None);
    let mut h = with(&[
        (
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "a=1"),
    ]);
    let ids = propagate(&t, &mut h);
    assert!(ids.parent.is_none());
    assert_ne!(hex(&ids.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(h.get(&TRACESTATE).is_none());
    let out = parse_traceparent(
        h.get(&TRACEPARENT)
            .map(|v| v.as_bytes())
            .unwrap_or_default(),
    )
    .expect("valid out");
    assert_eq!(
        out.flags,
        FLAG_SAMPLED | FLAG_RANDOM,
        "new random trace, sampled at ratio 1"
    );
}

#[test]
fn new_traces_follow_the_sampling_ratio() {
    let t = telemetry(0.0, None);
    let mut h = HeaderMap::new();
    assert!(!propagate(&t, &mut h).sampled);
    let out = parse_traceparent(
        h.get(&TRACEPARENT)
            .map(|v| v.as_bytes())
            .unwrap_or_default(),
    )
    .expect("valid");
    assert_eq!(out.flags, FLAG_RANDOM);
}

#[test]
fn b3_is_read_and_written_when_configured() {
    let t = telemetry(0.0, Some(B3Format::Single));
    let mut h = with(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]);
    let ids = propagate(&t, &mut h);
    assert_eq!(hex(&ids.trace_id), "80f198ee56343ba864fe8b2a57d3eff7");
    let b3 = h
        .get("b3")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        b3.starts_with("80f198ee56343ba864fe8b2a57d3eff7-") && b3.ends_with("-1-e457b5a2e4d86bd1"),
        "{b3}"
    );
    assert!(h.get(&TRACEPARENT).is_some(), "W3C is always written");
}

fn hex(b: &[u8]) -> String {
    let mut s = String::new();
    trace_context::push_hex(&mut s, b);
    s
}
