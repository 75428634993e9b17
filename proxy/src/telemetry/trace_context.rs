//! Trace context on the wire: W3C Trace Context (`traceparent`, `tracestate`; Level 1, plus
//! Level 2's random-trace-id flag) and Zipkin B3 (single `b3` header and the `X-B3-*` headers).
//!
//! Processing rules implemented here (W3C §3.2, §3.3, §4):
//! - `traceparent` must be `version-traceid-parentid-flags` in lower-case hex; version `ff` is
//!   invalid; version `00` is exactly 55 characters; a higher version is parsed as `00` from its
//!   first 55 characters if what follows starts with `-`; all-zero ids are invalid;
//! - two `traceparent` headers are invalid; an invalid one means a new trace and `tracestate` is
//!   dropped unparsed;
//! - `tracestate` headers are combined in order; members are `key=value` with the spec's key and
//!   value grammars, at most 32 and unique; an invalid `tracestate` is dropped alone; an oversized
//!   one (over 512 characters) loses its longest members (over 128 characters) first, then members
//!   from the right;
//! - flags other than sampled (bit 0) and random (bit 1) are not propagated; we only ever send
//!   version `00`.

use http::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub static B3: HeaderName = HeaderName::from_static("b3");
pub static B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub static B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub static B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub static B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

pub const FLAG_SAMPLED: u8 = 0x01;
pub const FLAG_RANDOM: u8 = 0x02;
const PROPAGATED_FLAGS: u8 = FLAG_SAMPLED | FLAG_RANDOM;
const MAX_MEMBERS: usize = 32;
const MAX_TRACESTATE_LEN: usize = 512;
const LONG_MEMBER: usize = 128;

/// The context a request arrived with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
    /// Valid, normalised tracestate to pass on (W3C only).
    pub tracestate: Option<String>,
}

/// Reads the context: W3C first; B3 only when there is no `traceparent` header at all.
pub fn extract(headers: &HeaderMap) -> Option<Incoming> {
    let mut parents = headers.get_all(&TRACEPARENT).iter();
    if let Some(first) = parents.next() {
        if parents.next().is_some() {
            return None;
        }
        let mut ctx = parse_traceparent(first.as_bytes())?;
        ctx.tracestate = combine_tracestate(headers);
        return Some(ctx);
    }
    extract_b3(headers)
}

pub fn parse_traceparent(v: &[u8]) -> Option<Incoming> {
    if v.len() < 55 {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    if version == 0xff || v[2] != b'-' {
        return None;
    }
    if version == 0x00 && v.len() != 55 {
        return None;
    }
    if version > 0x00 && v.len() > 55 && v[55] != b'-' {
        return None;
    }
    if v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id: [u8; 16] = hex_array(&v[3..35])?;
    let parent_id: [u8; 8] = hex_array(&v[36..52])?;
    let flags = hex_byte(&v[53..55])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(Incoming {
        trace_id,
        parent_id,
        flags: flags & PROPAGATED_FLAGS,
        tracestate: None,
    })
}

pub fn format_traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> HeaderValue {
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    push_hex(&mut s, trace_id);
    s.push('-');
    push_hex(&mut s, span_id);
    s.push('-');
    push_hex(&mut s, &[flags & PROPAGATED_FLAGS]);
    HeaderValue::from_str(&s).unwrap_or_else(|_| {
        HeaderValue::from_static("00-00000000000000000000000000000000-0000000000000000-00")
    })
}

/// The combined, validated `tracestate`, or None if absent or invalid.
fn combine_tracestate(headers: &HeaderMap) -> Option<String> {
    let mut members: Vec<&str> = Vec::new();
    for value in headers.get_all(&TRACESTATE) {
        let value = value.to_str().ok()?;
        for member in value.split(',') {
            let member = member.trim_matches(|c| c == ' ' || c == '\t');
            if !member.is_empty() {
                members.push(member);
            }
        }
    }
    if members.is_empty() || members.len() > MAX_MEMBERS {
        return None;
    }
    let mut keys = Vec::with_capacity(members.len());
    for m in &members {
        let (key, value) = m.split_once('=')?;
        if !valid_key(key) || !valid_value(value) || keys.contains(&key) {
            return None;
        }
        keys.push(key);
    }
    Some(truncate(members))
}

fn truncate(mut members: Vec<&str>) -> String {
    let len = |m: &[&str]| m.iter().map(|s| s.len()).sum::<usize>() + m.len().saturating_sub(1);
    while len(&members) > MAX_TRACESTATE_LEN {
        match members.iter().rposition(|m| m.len() > LONG_MEMBER) {
            Some(i) => {
                members.remove(i);
            }
            None => {
                members.pop();
            }
        }
    }
    members.join(",")
}

fn key_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/')
}

fn valid_key(key: &str) -> bool {
    let k = key.as_bytes();
    match key.split_once('@') {
        None => {
            !k.is_empty()
                && k.len() <= 256
                && k[0].is_ascii_lowercase()
                && k.iter().all(|c| key_char(*c))
        }
        Some((tenant, system)) => {
            let (t, s) = (tenant.as_bytes(), system.as_bytes());
            !t.is_empty()
                && t.len() <= 241
                && (t[0].is_ascii_lowercase() || t[0].is_ascii_digit())
                && t.iter().all(|c| key_char(*c))
                && !s.is_empty()
                && s.len() <= 14
                && s[0].is_ascii_lowercase()
                && s.iter().all(|c| key_char(*c))
        }
    }
}

fn valid_value(value: &str) -> bool {
    let v = value.as_bytes();
    let nblk = |c: u8| matches!(c, 0x21..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e);
    !v.is_empty()
        && v.len() <= 256
        && v.iter().all(|c| *c == b' ' || nblk(*c))
        && v.last().is_some_and(|c| nblk(*c))
}

/// B3 single (`b3: {trace}-{span}[-{sampled}[-{parent}]]`) or multi headers. 64-bit trace ids are
/// left-padded to 128 bits. A sampling-only `b3: 0|1|d` carries no ids and yields None.
fn extract_b3(headers: &HeaderMap) -> Option<Incoming> {
    if let Some(single) = headers.get(&B3).and_then(|v| v.to_str().ok()) {
        let mut parts = single.split('-');
        let trace_id = b3_trace_id(parts.next()?)?;
        let parent_id: [u8; 8] = hex_array(parts.next()?.as_bytes())?;
        let sampled = match parts.next() {
            None => false,
            Some("1" | "d") => true,
            Some("0") => false,
            Some(_) => return None,
        };
        return valid_ids(trace_id, parent_id, sampled);
    }
    let trace_id = b3_trace_id(headers.get(&B3_TRACE_ID)?.to_str().ok()?)?;
    let parent_id: [u8; 8] = hex_array(headers.get(&B3_SPAN_ID)?.as_bytes())?;
    let sampled = headers
        .get(&B3_SAMPLED)
        .is_some_and(|v| v == "1" || v == "true")
        || headers.get(&B3_FLAGS).is_some_and(|v| v == "1");
    valid_ids(trace_id, parent_id, sampled)
}

fn valid_ids(trace_id: [u8; 16], parent_id: [u8; 8], sampled: bool) -> Option<Incoming> {
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(Incoming {
        trace_id,
        parent_id,
        flags: if sampled { FLAG_SAMPLED } else { 0 },
        tracestate: None,
    })
}

fn b3_trace_id(s: &str) -> Option<[u8; 16]> {
    match s.len() {
        32 => hex_array(s.as_bytes()),
        16 => {
            let low: [u8; 8] = hex_array(s.as_bytes())?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            Some(id)
        }
        _ => None,
    }
}

/// Writes B3 headers for the outgoing request (single form or multi form).
pub fn inject_b3(
    headers: &mut HeaderMap,
    trace_id: &[u8; 16],
    span_id: &[u8; 8],
    parent: Option<&[u8; 8]>,
    sampled: bool,
    single: bool,
) {
    let mut trace = String::with_capacity(32);
    push_hex(&mut trace, trace_id);
    let mut span = String::with_capacity(16);
    push_hex(&mut span, span_id);
    let flag = if sampled { "1" } else { "0" };
    let parent_hex = parent.map(|p| {
        let mut s = String::with_capacity(16);
        push_hex(&mut s, p);
        s
    });
    if single {
        let mut v = format!("{trace}-{span}-{flag}");
        if let Some(p) = &parent_hex {
            v.push('-');
            v.push_str(p);
        }
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(&B3, v);
        }
    } else {
        for (name, value) in [
            (&B3_TRACE_ID, trace),
            (&B3_SPAN_ID, span),
            (&B3_SAMPLED, flag.to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        match parent_hex.and_then(|p| HeaderValue::from_str(&p).ok()) {
            Some(p) => {
                headers.insert(&B3_PARENT_SPAN_ID, p);
            }
            None => {
                headers.remove(&B3_PARENT_SPAN_ID);
            }
        }
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    Some(hex_val(*two.first()?)? << 4 | hex_val(*two.get(1)?)?)
}

fn hex_array<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = hex_byte(pair)?;
    }
    Some(out)
}

pub fn push_hex(s: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
}

/// A random non-zero id.
pub fn random_id<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    loop {
        for chunk in out.chunks_mut(8) {
            let r = crate::random::next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        if out.iter().any(|b| *b != 0) {
            return out;
        }
    }
}

#[cfg(test)]
mod tests;
