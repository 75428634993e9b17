use super::*;

const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|_| B3.clone()),
            HeaderValue::from_str(v).unwrap_or_else(|_| HeaderValue::from_static("x")),
        );
    }
    h
}

#[test]
fn a_valid_traceparent_parses_and_round_trips() {
    let ctx = parse_traceparent(VALID.as_bytes()).expect("valid");
    assert_eq!(ctx.flags, FLAG_SAMPLED);
    assert_eq!(
        format_traceparent(&ctx.trace_id, &ctx.parent_id, ctx.flags),
        VALID
    );
}

#[test]
fn malformed_traceparents_are_invalid() {
    let bad = [
        "",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0", // short
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-", // v00 with extra
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", // upper case
        "00-00000000000000000000000000000000-b7ad6b7169203331-01", // zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", // zero parent id
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", // forbidden version
        "0g-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", // bad version hex
        "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", // bad separator
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0x", // bad flags
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-101", // shifted fields
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x", // future version, no dash after 55
    ];
    for b in bad {
        assert!(
            parse_traceparent(b.as_bytes()).is_none(),
            "{b:?} must be invalid"
        );
    }
}

#[test]
fn a_future_version_is_read_as_version_00() {
    let ctx = parse_traceparent(
        b"cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-the-future-holds",
    );
    let ctx = ctx.expect("future versions parse");
    assert_eq!(
        format_traceparent(&ctx.trace_id, &ctx.parent_id, ctx.flags),
        VALID,
        "sent on as version 00"
    );
    assert!(
        parse_traceparent(b"cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_some()
    );
}

#[test]
fn only_sampled_and_random_flags_are_propagated() {
    let ctx = parse_traceparent(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-ff")
        .expect("valid");
    assert_eq!(ctx.flags, FLAG_SAMPLED | FLAG_RANDOM);
    let ctx = parse_traceparent(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
        .expect("valid");
    assert_eq!(ctx.flags, 0, "not sampled stays not sampled");
}

#[test]
fn duplicated_traceparent_starts_a_new_trace_and_drops_tracestate() {
    let h = headers(&[
        ("traceparent", VALID),
        ("traceparent", VALID),
        ("tracestate", "a=1"),
    ]);
    assert_eq!(extract(&h), None);
}

#[test]
fn invalid_traceparent_is_not_rescued_by_tracestate_or_b3() {
    let h = headers(&[
        ("traceparent", "garbage"),
        ("tracestate", "a=1"),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
    ]);
    assert_eq!(
        extract(&h),
        None,
        "a present but invalid traceparent means a new trace"
    );
}

#[test]
fn tracestate_headers_are_combined_trimmed_and_kept_in_order() {
    let h = headers(&[
        ("traceparent", VALID),
        ("tracestate", "foo=1, bar=2 ,"),
        ("tracestate", " ,baz@vendor=3\t"),
    ]);
    let ctx = extract(&h).expect("valid");
    assert_eq!(ctx.tracestate.as_deref(), Some("foo=1,bar=2,baz@vendor=3"));
}

#[test]
fn invalid_tracestate_is_dropped_but_the_trace_continues() {
    for bad in [
        "foo=1,foo=2",
        "Foo=1",
        "foo",
        "foo=",
        "foo=a,b",
        "1foo=1",
        "foo=a=b",
        "t@VENDOR=1",
        "@v=1",
        "t@=1",
        "t@0v=1",
    ] {
        let h = headers(&[("traceparent", VALID), ("tracestate", bad)]);
        let ctx = extract(&h).expect("traceparent is still valid");
        assert_eq!(ctx.tracestate, None, "{bad:?} must be dropped");
    }
    for good in [
        "foo=bar baz",
        "a*b/c-d_e=1",
        "0tenant@sys=x",
        "foo=!\"#$%&'()*+-./:;<>?@[]^_`{|}~",
    ] {
        let h = headers(&[("traceparent", VALID), ("tracestate", good)]);
        assert_eq!(
            extract(&h).and_then(|c| c.tracestate).as_deref(),
            Some(good),
            "{good:?} is valid"
        );
    }
}

#[test]
fn tracestate_member_and_length_limits() {
    let members: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
    let h = headers(&[("traceparent", VALID), ("tracestate", &members.join(","))]);
    assert_eq!(
        extract(&h)
            .and_then(|c| c.tracestate)
            .map(|t| t.split(',').count()),
        Some(32)
    );
    let too_many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    let h = headers(&[("traceparent", VALID), ("tracestate", &too_many.join(","))]);
    assert_eq!(
        extract(&h).and_then(|c| c.tracestate),
        None,
        "33 members are invalid"
    );

    // Over 512 characters: the long member goes first, then from the right.
    let long = format!("long={}", "x".repeat(200));
    let mut list = vec!["a=1".to_string(), long];
    list.extend((0..20).map(|i| format!("m{i:02}={}", "y".repeat(20))));
    let h = headers(&[("traceparent", VALID), ("tracestate", &list.join(","))]);
    let kept = extract(&h).and_then(|c| c.tracestate).unwrap_or_default();
    assert!(kept.len() <= 512 && kept.starts_with("a=1,m00="), "{kept}");
    assert!(!kept.contains("long="));
}

#[test]
fn b3_single_and_multi_are_read_without_traceparent() {
    let h = headers(&[(
        "b3",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
    )]);
    let ctx = extract(&h).expect("b3 single");
    assert_eq!(ctx.flags, FLAG_SAMPLED);
    assert_eq!(
        ctx.parent_id,
        [0xe4, 0x57, 0xb5, 0xa2, 0xe4, 0xd8, 0x6b, 0xd1]
    );

    let h = headers(&[
        ("x-b3-traceid", "a3ce929d0e0e4736"),
        ("x-b3-spanid", "00f067aa0ba902b7"),
        ("x-b3-sampled", "0"),
    ]);
    let ctx = extract(&h).expect("b3 multi with a 64-bit trace id");
    assert_eq!(&ctx.trace_id[..8], &[0; 8]);
    assert_eq!(ctx.flags, 0);

    assert_eq!(
        extract(&headers(&[("b3", "1")])),
        None,
        "sampling-only b3 has no ids"
    );
    assert_eq!(
        extract(&headers(&[("b3", "nothex-e457b5a2e4d86bd1")])),
        None
    );
}

#[test]
fn b3_is_written_in_both_forms() {
    let mut h = HeaderMap::new();
    inject_b3(&mut h, &[1; 16], &[2; 8], Some(&[3; 8]), true, true);
    assert_eq!(
        h.get(&B3).and_then(|v| v.to_str().ok()),
        Some("01010101010101010101010101010101-0202020202020202-1-0303030303030303")
    );
    let mut h = HeaderMap::new();
    inject_b3(&mut h, &[1; 16], &[2; 8], None, false, false);
    assert_eq!(
        h.get(&B3_SPAN_ID).and_then(|v| v.to_str().ok()),
        Some("0202020202020202")
    );
    assert_eq!(h.get(&B3_SAMPLED).and_then(|v| v.to_str().ok()), Some("0"));
    assert!(h.get(&B3_PARENT_SPAN_ID).is_none());
}

#[test]
fn random_ids_are_non_zero_and_distinct() {
    let a: [u8; 16] = random_id();
    let b: [u8; 16] = random_id();
    assert_ne!(a, [0; 16]);
    assert_ne!(a, b);
}
