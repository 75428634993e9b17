//! Trace context (`proxy/src/telemetry/trace_context.rs`): `traceparent`, `tracestate`, B3 single
//! and multi. Properties checked besides not panicking:
//! - a parsed `traceparent` formats back to a value that parses to the same ids and flags, and a
//!   valid version-00 value with propagated flags formats back byte for byte;
//! - the `tracestate` we pass on is within the spec's bounds (32 members, 512 characters, unique
//!   keys), keeps the received members in order without inventing or reordering any (invalid
//!   members and repeated keys are dropped, never the valid ones around them) and passes through
//!   a second hop byte for byte; one field that needed no change is passed on as received;
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

fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|c| !matches!(c, b' ' | b'\t'));
    let end = s.iter().rposition(|c| !matches!(c, b' ' | b'\t'));
    match (start, end) {
        (Some(start), Some(end)) => &s[start..=end],
        _ => &[],
    }
}

/// The non-empty members of a list, trimmed of optional whitespace.
fn members(fields: &[&[u8]]) -> Vec<Vec<u8>> {
    fields
        .iter()
        .flat_map(|f| f.split(|c| *c == b','))
        .map(trim_ows)
        .filter(|m| !m.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
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
    let received: Vec<&[u8]> = headers
        .get_all(&tc::TRACESTATE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let sent = members(&[state.as_bytes()]);
    assert!(
        state.len() <= tc::MAX_TRACESTATE_LEN,
        "tracestate of {} characters",
        state.len()
    );
    assert!(!sent.is_empty(), "an empty tracestate is not sent");
    assert!(sent.len() <= tc::MAX_MEMBERS);
    let keys: Vec<&[u8]> = sent
        .iter()
        .map(|m| m.split(|c| *c == b'=').next().unwrap_or_default())
        .collect();
    for (i, key) in keys.iter().enumerate() {
        assert!(!keys[..i].contains(key), "a repeated key is sent");
    }
    // What is sent is a subsequence of what was received.
    let mut from = members(&received).into_iter();
    for member in &sent {
        assert!(
            from.any(|m| &m == member),
            "{:?} was not received, or not in this order",
            String::from_utf8_lossy(member)
        );
    }
    if let [one] = received[..] {
        if members(&[one]) == sent && one.len() <= tc::MAX_TRACESTATE_LEN {
            assert_eq!(
                state.as_bytes(),
                one,
                "a valid field is passed on as received"
            );
        }
    }
    // The next hop receives what we send: it must keep it as is.
    let mut next = HeaderMap::new();
    next.insert(
        &tc::TRACEPARENT,
        tc::format_traceparent(&ctx.trace_id, &tc::random_id(), ctx.flags),
    );
    next.insert(&tc::TRACESTATE, state.clone());
    let forwarded = tc::extract(&next).expect("our own headers parse");
    assert_eq!(forwarded.tracestate.as_ref(), Some(state));
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
