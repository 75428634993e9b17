use super::*;

const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const VALID_TRACE_ID: [u8; 16] = [
    0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c,
];

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("test header name"),
            HeaderValue::from_str(v).expect("test header value"),
        );
    }
    h
}

fn invalid(traceparent: &str) -> bool {
    parse_traceparent(traceparent.as_bytes()).is_none()
}

/// The `tracestate` sent on for these `tracestate` fields under a valid `traceparent`, which
/// must stay valid (and keep its trace id) whatever the fields hold.
fn passed_on_raw(fields: &[&[u8]]) -> Option<String> {
    let mut h = HeaderMap::new();
    h.insert(&TRACEPARENT, HeaderValue::from_static(VALID));
    for f in fields {
        h.append(
            &TRACESTATE,
            HeaderValue::from_bytes(f).expect("test header value"),
        );
    }
    let ctx = extract(&h).expect("tracestate never invalidates traceparent");
    assert_eq!(ctx.trace_id, VALID_TRACE_ID, "the trace continues");
    ctx.tracestate
        .map(|v| String::from_utf8(v.as_bytes().to_vec()).expect("we only send ASCII"))
}

fn passed_on(fields: &[&str]) -> Option<String> {
    let fields: Vec<&[u8]> = fields.iter().map(|f| f.as_bytes()).collect();
    passed_on_raw(&fields)
}

/// A `key=xxx…` member of exactly `len` characters.
fn member(key: &str, len: usize) -> String {
    format!("{key}={}", "x".repeat(len - key.len() - 1))
}

// traceparent (§3.2)

#[test]
fn version_00_is_exactly_55_lower_case_hex_characters() {
    let ctx = parse_traceparent(VALID.as_bytes()).expect("valid");
    assert_eq!(ctx.trace_id, VALID_TRACE_ID);
    assert_eq!(
        ctx.parent_id,
        [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]
    );
    assert_eq!(ctx.flags, FLAG_SAMPLED);
    assert_eq!(
        format_traceparent(&ctx.trace_id, &ctx.parent_id, ctx.flags),
        VALID
    );
    assert!(invalid(&VALID[..54]), "54 characters");
    assert!(
        invalid(&format!("{VALID}-")),
        "version 00 with a fifth field"
    );
    assert!(invalid(&format!("{VALID}0")), "56 characters");
}

#[test]
fn upper_case_hex_is_invalid() {
    for bad in [
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-B7AD6B7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0A",
        "0A-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ] {
        assert!(invalid(bad), "{bad}");
    }
}

#[test]
fn all_zero_trace_id_or_parent_id_is_invalid() {
    assert!(invalid(
        "00-00000000000000000000000000000000-b7ad6b7169203331-01"
    ));
    assert!(invalid(
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"
    ));
}

#[test]
fn version_ff_is_invalid() {
    assert!(invalid(
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ));
    assert!(invalid(
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future"
    ));
}

#[test]
fn malformed_fields_are_invalid() {
    for bad in [
        "",
        "0g-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", // version not hex
        "000-af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", // version of 3 digits
        "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", // separator
        "00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331_01",
        "00-.af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", // trace id not hex
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333.-01", // parent id not hex
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0x", // flags not hex
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-101", // shifted fields
        "00-0af7651916cd43dd8448eb211c80319c0-b7ad6b716920333-01", // shifted fields
    ] {
        assert!(invalid(bad), "{bad:?}");
    }
}

#[test]
fn a_higher_version_is_read_from_its_first_four_fields_and_sent_as_version_00() {
    for future in [
        "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-the-future-holds",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
    ] {
        let ctx = parse_traceparent(future.as_bytes()).expect(future);
        assert_eq!(
            format_traceparent(&ctx.trace_id, &ctx.parent_id, ctx.flags),
            VALID,
            "{future}"
        );
    }
    for bad in [
        "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01.what-the-future-holds",
        "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0",
        "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-011",
    ] {
        assert!(invalid(bad), "{bad}");
    }
}

#[test]
fn only_sampled_and_random_flags_are_propagated() {
    let flags = |f: &str| {
        parse_traceparent(
            format!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-{f}").as_bytes(),
        )
        .map(|c| c.flags)
    };
    assert_eq!(flags("ff"), Some(FLAG_SAMPLED | FLAG_RANDOM));
    assert_eq!(flags("09"), Some(FLAG_SAMPLED));
    assert_eq!(flags("02"), Some(FLAG_RANDOM));
    assert_eq!(flags("00"), Some(0), "not sampled stays not sampled");
    assert_eq!(
        format_traceparent(&[1; 16], &[2; 8], 0xff),
        "00-01010101010101010101010101010101-0202020202020202-03"
    );
}

#[test]
fn whitespace_around_the_traceparent_field_is_not_part_of_it() {
    for value in [
        format!(" {VALID}"),
        format!("\t{VALID}"),
        format!("{VALID} \t"),
    ] {
        let h = headers(&[("traceparent", &value), ("tracestate", "a=1")]);
        let ctx = extract(&h).expect("valid once trimmed");
        assert_eq!(ctx.trace_id, VALID_TRACE_ID);
        assert_eq!(ctx.tracestate, Some(HeaderValue::from_static("a=1")));
    }
}

#[test]
fn two_traceparent_fields_are_invalid_and_tracestate_is_dropped() {
    let h = headers(&[
        ("traceparent", VALID),
        ("traceparent", VALID),
        ("tracestate", "a=1"),
    ]);
    assert_eq!(extract(&h), None);
}

#[test]
fn an_invalid_traceparent_drops_tracestate_and_is_not_rescued_by_b3() {
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

// tracestate (§3.3)

#[test]
fn tracestate_is_not_passed_on_without_a_traceparent() {
    let h = headers(&[
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ("tracestate", "a=1"),
    ]);
    let ctx = extract(&h).expect("b3 context");
    assert_eq!(ctx.tracestate, None);
}

#[test]
fn keys_follow_the_level_2_grammar() {
    for key in [
        "z".repeat(256),                                   // longest simple key
        "tenant@vendor".to_string(),                       // Level 1 multi-tenant key
        format!("{}@{}", "t".repeat(241), "v".repeat(14)), // Level 1's longest tenant and system
        "7digit-first".to_string(),                        // Level 2: a digit may start any key
        format!("t@{}", "v".repeat(20)), // Level 2: no 14-character system-id bound
        format!("{}@v", "t".repeat(250)), // Level 2: no 241-character tenant-id bound
        "a@b@c".to_string(),             // Level 2: `@` is a key character like the others
        "foo@".to_string(),
        "a_b-c*d/e".to_string(),
        "abcdefghijklmnopqrstuvwxyz0123456789_-*/@".to_string(),
    ] {
        let list = format!("{key}=1,b=2");
        assert_eq!(passed_on(&[&list]), Some(list.clone()), "{key}");
    }
}

#[test]
fn keys_outside_the_grammar_are_dropped_alone() {
    for key in [
        "z".repeat(257),
        format!("{}@v", "t".repeat(255)),
        "Foo".to_string(),
        "fOo".to_string(),
        "@foo".to_string(),
        "_foo".to_string(),
        "*foo".to_string(),
        "foo.bar".to_string(),
        "foo bar".to_string(),
        "foo ".to_string(),
        "foo\t".to_string(),
        String::new(),
    ] {
        let list = format!("a=1,{key}=2,b=3");
        assert_eq!(passed_on(&[&list]).as_deref(), Some("a=1,b=3"), "{key:?}");
    }
    assert_eq!(
        passed_on_raw(&[b"a=1,f\xc3\xb6o=2,b=3"]).as_deref(),
        Some("a=1,b=3"),
        "non-ASCII key"
    );
}

#[test]
fn values_follow_the_grammar() {
    let printable: String = (0x20u8..=0x7e)
        .filter(|c| !matches!(c, b',' | b'='))
        .map(char::from)
        .collect();
    for value in [
        printable.as_str(),
        " leading spaces are part of the value",
        "inner spaces",
        &"v".repeat(256),
    ] {
        let list = format!("a=1,k={value},b=3");
        assert_eq!(passed_on(&[&list]), Some(list.clone()), "{value:?}");
    }
    for value in ["", " ", "a=b", "tab\tinside", &"v".repeat(257)] {
        let list = format!("a=1,k={value},b=3");
        assert_eq!(passed_on(&[&list]).as_deref(), Some("a=1,b=3"), "{value:?}");
    }
    assert_eq!(
        passed_on_raw(&[b"a=1,k=caf\xc3\xa9,b=3"]).as_deref(),
        Some("a=1,b=3"),
        "non-ASCII value"
    );
}

#[test]
fn optional_whitespace_and_empty_members_are_allowed() {
    // Valid as received: sent on as is (OWS may be kept, §3.3.1).
    let list = " foo=1 \t, ,\tbar=2 ,, ";
    assert_eq!(passed_on(&[list]).as_deref(), Some(list));
    // Rewritten (here because of an invalid member): members without OWS or empty members.
    assert_eq!(
        passed_on(&[" foo=1 \t, ,BAD=1 ,\tbar=2 ,, "]).as_deref(),
        Some("foo=1,bar=2")
    );
    // Trailing spaces are OWS, not part of the value.
    assert_eq!(
        passed_on(&["foo=1 ", "bar=2\t"]).as_deref(),
        Some("foo=1,bar=2")
    );
}

#[test]
fn an_unchanged_tracestate_is_passed_on_without_copying() {
    let received = HeaderValue::from_static("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    let mut h = HeaderMap::new();
    h.insert(&TRACEPARENT, HeaderValue::from_static(VALID));
    h.insert(&TRACESTATE, received.clone());
    let sent = extract(&h)
        .and_then(|c| c.tracestate)
        .expect("valid tracestate");
    assert_eq!(sent, received);
    assert_eq!(
        sent.as_bytes().as_ptr(),
        received.as_bytes().as_ptr(),
        "the same bytes, not a copy"
    );
}

#[test]
fn several_tracestate_fields_are_combined_in_order() {
    assert_eq!(
        passed_on(&["foo=1,bar=2", "rojo=1,congo=2", "baz=3"]).as_deref(),
        Some("foo=1,bar=2,rojo=1,congo=2,baz=3")
    );
    assert_eq!(passed_on(&["", "foo=1"]).as_deref(), Some("foo=1"));
    assert_eq!(passed_on(&["foo=1", ""]).as_deref(), Some("foo=1"));
    assert_eq!(
        passed_on(&["foo=1,bar=2 ,", " ,baz@vendor=3\t"]).as_deref(),
        Some("foo=1,bar=2,baz@vendor=3")
    );
}

#[test]
fn at_most_32_members_are_passed_on() {
    let members: Vec<String> = (1..=33).map(|i| format!("bar{i:02}={i:02}")).collect();
    let first_32 = members[..32].join(",");
    // 32 members over four fields, as the W3C test suite sends them.
    let fields = [
        members[0..10].join(","),
        members[10..20].join(","),
        members[20..30].join(","),
        members[30..32].join(","),
    ];
    let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
    assert_eq!(passed_on(&fields), Some(first_32.clone()));
    // 33: the 33rd, rightmost, goes.
    assert_eq!(passed_on(&[&members.join(",")]), Some(first_32.clone()));
    // Dropped members do not count.
    let with_invalid = format!("{},BAD=1", first_32);
    assert_eq!(passed_on(&[&with_invalid]), Some(first_32));
}

#[test]
fn a_repeated_key_keeps_its_leftmost_entry() {
    assert_eq!(
        passed_on(&["foo=1,bar=2,foo=3"]).as_deref(),
        Some("foo=1,bar=2")
    );
    assert_eq!(passed_on(&["foo=1,foo=1"]).as_deref(), Some("foo=1"));
    assert_eq!(
        passed_on(&["foo=1", "bar=2,foo=2"]).as_deref(),
        Some("foo=1,bar=2"),
        "across fields too"
    );
}

#[test]
fn invalid_members_are_dropped_and_valid_ones_kept() {
    assert_eq!(
        passed_on(&["a=1,b,c=,D=4,e=5=5,=6,f=7"]).as_deref(),
        Some("a=1,f=7")
    );
    assert_eq!(passed_on(&["BAD=1", "a=1", "b"]).as_deref(), Some("a=1"));
}

#[test]
fn a_tracestate_without_valid_members_is_not_sent() {
    for fields in [&[""][..], &["  ,\t, "], &["A=1,b"], &["", "="]] {
        assert_eq!(passed_on(fields), None, "{fields:?}");
    }
}

#[test]
fn over_512_characters_members_longer_than_128_go_first_then_from_the_right() {
    // Exactly 512: sent as is.
    let fits = [member("a", 200), member("b", 200), member("c", 110)].join(",");
    assert_eq!(fits.len(), 512);
    assert_eq!(passed_on(&[&fits]), Some(fits.clone()));

    // 513: the rightmost member over 128 characters goes, and that is enough.
    let over = [member("a", 200), member("b", 200), member("c", 111)];
    assert_eq!(
        passed_on(&[&over.join(",")]),
        Some([over[0].clone(), over[2].clone()].join(","))
    );

    // 128 characters is not "longer than 128": only the 129-character member goes.
    let edge = [
        member("a", 129),
        member("b", 128),
        member("c", 128),
        member("d", 128),
    ];
    assert_eq!(passed_on(&[&edge.join(",")]), Some(edge[1..].join(",")));

    // No long member left and still over: members go from the right.
    let mut list: Vec<String> = (0..20).map(|i| member(&format!("k{i:02}"), 30)).collect();
    list.insert(1, member("long", 129));
    let kept: Vec<String> = (0..16).map(|i| member(&format!("k{i:02}"), 30)).collect();
    assert_eq!(passed_on(&[&list.join(",")]), Some(kept.join(",")));

    // Over 512 only because of OWS: rewritten without it, nothing dropped.
    let a = member("a", 250);
    let b = member("b", 250);
    let spaced = format!("{a} ,\t\t\t\t\t\t\t\t\t\t {b}");
    assert!(spaced.len() > 512);
    assert_eq!(passed_on(&[&spaced]), Some(format!("{a},{b}")));
}

// B3

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

#[test]
fn per_request_ids_are_sent_never_indexed() {
    // HPACK must not add a value that is new on every request to the connection's table.
    assert!(format_traceparent(&[1; 16], &[2; 8], FLAG_SAMPLED).is_sensitive());
    let mut h = HeaderMap::new();
    inject_b3(&mut h, &[1; 16], &[2; 8], Some(&[3; 8]), true, true);
    assert!(h.get(&B3).is_some_and(|v| v.is_sensitive()));
    let mut h = HeaderMap::new();
    inject_b3(&mut h, &[1; 16], &[2; 8], Some(&[3; 8]), true, false);
    for name in [&B3_TRACE_ID, &B3_SPAN_ID, &B3_SAMPLED, &B3_PARENT_SPAN_ID] {
        assert!(h.get(name).is_some_and(|v| v.is_sensitive()), "{name}");
    }
}

#[test]
fn ids_cut_from_shared_chunks_stay_whole_and_distinct() {
    // Kept alive together, they fill several chunks; chunks freed in between are reused.
    let ids: Vec<HeaderValue> = (0..200).map(|_| new_request_id()).collect();
    let parents: Vec<HeaderValue> = (0..50)
        .map(|i| format_traceparent(&[1; 16], &[i + 1; 8], FLAG_SAMPLED))
        .collect();
    let mut seen = std::collections::HashSet::new();
    for id in &ids {
        assert_eq!(id.len(), 32);
        assert!(id.as_bytes().iter().all(|b| b.is_ascii_hexdigit()));
        assert!(id.is_sensitive());
        assert!(seen.insert(id.as_bytes().to_vec()), "repeated id");
    }
    for (i, parent) in parents.iter().enumerate() {
        let ctx = parse_traceparent(parent.as_bytes());
        assert_eq!(ctx.map(|c| c.parent_id), Some([i as u8 + 1; 8]));
    }
    drop(ids);
    assert_eq!(new_request_id().len(), 32);
}
