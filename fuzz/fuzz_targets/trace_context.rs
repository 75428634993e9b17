//! Trace context (`proxy/src/telemetry/trace_context.rs`): `traceparent`, `tracestate`, B3 single
//! and multi. Properties checked besides not panicking:
//! - a parsed `traceparent` formats back to a value that parses to the same ids and flags, and a
//!   valid version-00 value with propagated flags formats back byte for byte;
//! - what we send is always a valid header value, and the `tracestate` we pass on is within the
//!   spec's bounds and passes through a second hop unchanged;
//! - B3 headers we write read back as the ids and sampling we wrote.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::{arbitrary, fuzz_target};
use trellis_proxy::telemetry::trace_context::{self as tc, Incoming};

#[derive(arbitrary::Arbitrary, Debug)]
struct Input<'a> {
    raw: &'a [u8],
    traceparents: Vec<&'a [u8]>,
    tracestates: Vec<&'a [u8]>,
    b3: Option<&'a [u8]>,
    /// trace id, span id, parent span id, sampled, flags headers.
    b3_multi: [Option<&'a [u8]>; 5],
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    flags: u8,
    sampled: bool,
}

fn header_map(input: &Input<'_>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut add = |name: &http::HeaderName, value: &[u8]| {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name.clone(), v);
        }
    };
    input
        .traceparents
        .iter()
        .for_each(|v| add(&tc::TRACEPARENT, v));
    input
        .tracestates
        .iter()
        .for_each(|v| add(&tc::TRACESTATE, v));
    if let Some(v) = input.b3 {
        add(&tc::B3, v);
    }
    let multi = [
        &tc::B3_TRACE_ID,
        &tc::B3_SPAN_ID,
        &tc::B3_PARENT_SPAN_ID,
        &tc::B3_SAMPLED,
        &tc::B3_FLAGS,
    ];
    for (name, value) in multi.into_iter().zip(input.b3_multi) {
        if let Some(v) = value {
            add(name, v);
        }
    }
    headers
}

fn check_traceparent_round_trip(raw: &[u8]) {
    let Some(ctx) = tc::parse_traceparent(raw) else {
        return;
    };
    assert_ne!(ctx.trace_id, [0; 16]);
    assert_ne!(ctx.parent_id, [0; 8]);
    assert_eq!(ctx.flags & !(tc::FLAG_SAMPLED | tc::FLAG_RANDOM), 0);
    let formatted = tc::format_traceparent(&ctx.trace_id, &ctx.parent_id, ctx.flags);
    let again = tc::parse_traceparent(formatted.as_bytes()).expect("our own traceparent parses");
    assert_eq!(again, ctx);
    if raw.starts_with(b"00-") && matches!(&raw[53..], b"00" | b"01" | b"02" | b"03") {
        assert_eq!(
            formatted.as_bytes(),
            raw,
            "a valid version-00 value is written back as is"
        );
    }
}

fn check_extract(headers: &HeaderMap) {
    let Some(ctx) = tc::extract(headers) else {
        return;
    };
    assert_ne!(ctx.trace_id, [0; 16]);
    assert_ne!(ctx.parent_id, [0; 8]);
    let Some(state) = &ctx.tracestate else {
        return;
    };
    assert!(
        state.len() <= 512,
        "tracestate of {} characters",
        state.len()
    );
    assert!(state.split(',').count() <= 32);
    let value = HeaderValue::from_str(state).expect("tracestate we send is a header value");
    // The next hop receives what we send: it must keep it as is.
    let mut next = HeaderMap::new();
    next.insert(
        &tc::TRACEPARENT,
        tc::format_traceparent(&ctx.trace_id, &tc::random_id(), ctx.flags),
    );
    next.insert(&tc::TRACESTATE, value);
    let forwarded = tc::extract(&next).expect("our own headers parse");
    assert_eq!(forwarded.tracestate.as_deref(), Some(state.as_str()));
}

fn check_b3_round_trip(input: &Input<'_>) {
    for single in [true, false] {
        let mut headers = HeaderMap::new();
        tc::inject_b3(
            &mut headers,
            &input.trace_id,
            &input.span_id,
            input.parent.as_ref(),
            input.sampled,
            single,
        );
        for value in headers.values() {
            assert!(value.to_str().is_ok(), "B3 values are visible ASCII");
        }
        let read = tc::extract(&headers);
        if input.trace_id == [0; 16] || input.span_id == [0; 8] {
            assert_eq!(read, None, "all-zero ids are invalid");
            continue;
        }
        let expected = Incoming {
            trace_id: input.trace_id,
            parent_id: input.span_id,
            flags: if input.sampled { tc::FLAG_SAMPLED } else { 0 },
            tracestate: None,
        };
        assert_eq!(read, Some(expected), "single form: {single}");
    }
}

fuzz_target!(|input: Input<'_>| {
    check_traceparent_round_trip(input.raw);
    for v in &input.traceparents {
        check_traceparent_round_trip(v);
    }
    let formatted = tc::format_traceparent(&input.trace_id, &input.span_id, input.flags);
    let parsed = tc::parse_traceparent(formatted.as_bytes());
    if input.trace_id != [0; 16] && input.span_id != [0; 8] {
        let parsed = parsed.expect("a traceparent with non-zero ids parses");
        assert_eq!(parsed.trace_id, input.trace_id);
        assert_eq!(parsed.parent_id, input.span_id);
        assert_eq!(
            parsed.flags,
            input.flags & (tc::FLAG_SAMPLED | tc::FLAG_RANDOM)
        );
    } else {
        assert_eq!(parsed, None);
    }
    check_extract(&header_map(&input));
    check_b3_round_trip(&input);
});
