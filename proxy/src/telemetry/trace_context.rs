//! Trace context on the wire: W3C Trace Context (`traceparent`, `tracestate`) and Zipkin B3
//! (single `b3` header and the `X-B3-*` headers). This module owns the header rules, so that the
//! layer that uses them (`observe`) only decides what to do with a valid or missing context.
//!
//! W3C rules, by section of Trace Context Level 2 (same numbering in the Level 1 Recommendation):
//! - §3.2.2 `traceparent`: `version-traceid-parentid-flags`, lower-case hex only; version `ff`,
//!   all-zero ids and version `00` of any length but 55 are invalid. §3.2.4: a higher version is
//!   read from its first four fields when it is at least 55 characters and what follows them
//!   starts with `-`. Surrounding whitespace is not part of an HTTP field value (RFC 9110 §5.5).
//!   Two `traceparent` fields cannot both be the parent: invalid (restart the trace).
//! - §3.3: `tracestate` is not parsed when `traceparent` is invalid (it is dropped, §4.3), and an
//!   unusable `tracestate` never invalidates `traceparent`.
//! - §3.3.1: several `tracestate` fields form one list, in order (RFC 9110 §5.3); members are
//!   trimmed of OWS; empty members are skipped. §3.3.1.3.1 key: `(lcalpha / DIGIT) 0*255 keychar`
//!   with `@` a key character: Level 2's grammar, which every Level 1 key (simple and
//!   `tenant@system`) also matches, so no key valid under either level is lost.
//!   §3.3.1.3.2 value: 1 to 256 printable ASCII characters but `,` and `=`, not ending in a space.
//! - §4.3 allows discarding the whole `tracestate` or only its invalid members: only the invalid
//!   members go, because the valid ones belong to other vendors, whose keys §3.5 says not to
//!   delete. For the same reason a list of more than 32 members keeps its first 32 (the spec's
//!   truncation order, §3.3.1.5, removes from the end), and a repeated key keeps its leftmost entry
//!   (the most recent position: updated keys move left, §3.5), the later ones being dropped as
//!   §3.5 allows.
//! - §3.3.1.5: at least 512 characters are propagated; Trellis propagates up to exactly that and,
//!   above it, removes members longer than 128 characters first, then members from the right.
//! - Trellis adds no `tracestate` entry of its own: it passes on what it received, unchanged
//!   (same bytes, no allocation) when nothing had to be dropped, rewritten otherwise.
//! - flags other than sampled (bit 0) and random (bit 1, Level 2) are not propagated; version `00`
//!   is always sent (§3.4, "downgrade the version").

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::cell::RefCell;

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
/// `traceparent` version 00, and the prefix of higher versions that we read.
const TRACEPARENT_LEN: usize = 55;
pub const MAX_MEMBERS: usize = 32;
pub const MAX_TRACESTATE_LEN: usize = 512;
const LONG_MEMBER: usize = 128;
const MAX_KEY_LEN: usize = 256;
const MAX_VALUE_LEN: usize = 256;

/// The context a request arrived with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
    /// The `tracestate` to pass on (W3C only): the received field itself when it could be kept
    /// as is, else the valid members rewritten as one field; None when nothing valid is left.
    pub tracestate: Option<HeaderValue>,
}

/// Reads the context: W3C first; B3 only when there is no `traceparent` header at all.
pub fn extract(headers: &HeaderMap) -> Option<Incoming> {
    // Most requests from apps carry no trace context: one pass over the few names present is
    // cheaper than the three hashed lookups that would each find nothing (~300 instructions).
    if !(headers.keys()).any(|n| n == TRACEPARENT || n == B3 || n == B3_TRACE_ID) {
        return None;
    }
    let mut parents = headers.get_all(&TRACEPARENT).iter();
    if let Some(first) = parents.next() {
        if parents.next().is_some() {
            return None;
        }
        let mut ctx = parse_traceparent(trim_ows(first.as_bytes()))?;
        ctx.tracestate = pass_on_tracestate(headers);
        return Some(ctx);
    }
    extract_b3(headers)
}

pub fn parse_traceparent(v: &[u8]) -> Option<Incoming> {
    if v.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    if version == 0xff || v[2] != b'-' {
        return None;
    }
    if version == 0x00 && v.len() != TRACEPARENT_LEN {
        return None;
    }
    // A higher version may carry more fields, each introduced by a dash.
    if v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-' {
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
    let mut out = [0u8; TRACEPARENT_LEN];
    out[..3].copy_from_slice(b"00-");
    write_hex(&mut out[3..35], trace_id);
    out[35] = b'-';
    write_hex(&mut out[36..52], span_id);
    out[52] = b'-';
    write_hex(&mut out[53..55], &[flags & PROPAGATED_FLAGS]);
    let mut value = shared_value(&out).unwrap_or_else(|| {
        HeaderValue::from_static("00-00000000000000000000000000000000-0000000000000000-00")
    });
    never_indexed(&mut value);
    value
}

/// A new `x-request-id`: 32 lowercase hex digits of a random non-zero id, never indexed. Written
/// into a stack buffer and copied once into the value (`shared_value`); through a `String` it was
/// an allocation and ~400 instructions more per request (callgrind, issue #15).
pub fn new_request_id() -> HeaderValue {
    let mut out = [0u8; 32];
    write_hex(&mut out, &random_id::<16>());
    let mut value = shared_value(&out).unwrap_or_else(|| HeaderValue::from_static("0"));
    never_indexed(&mut value);
    value
}

/// Room for the ids of about ten requests (`shared_value`). Small, because one value still in
/// use (a request waiting long for its answer) keeps its whole chunk.
const ID_CHUNK: usize = 1024;

thread_local! {
    /// What is left of the chunk that this thread's new ids are cut from (`shared_value`).
    static ID_BYTES: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// `bytes` as a header value cut from a per-thread chunk, not copied into an allocation of its
/// own as `HeaderValue::from_bytes` does. Cut from a chunk the value is already reference
/// counted, so a copy of it (the retry layer's copy of the request's headers, the id kept for the
/// access log) is a count; a value of its own is made shared on its first copy, an allocation
/// more. With the allocation of the value itself that was four per request on the outbound side
/// (traceparent and x-request-id; callgrind, issue #15). `BytesMut::reserve` takes the chunk
/// back in place once every value cut from it is gone (with requests one at a time, each
/// time), and a new one otherwise. `None` only while the thread is exiting.
fn shared_value(bytes: &[u8]) -> Option<HeaderValue> {
    let cut = ID_BYTES.try_with(|chunk| {
        let mut chunk = chunk.try_borrow_mut().ok()?;
        if chunk.capacity() < bytes.len() {
            chunk.reserve(ID_CHUNK.max(bytes.len()));
        }
        chunk.extend_from_slice(bytes);
        Some(chunk.split().freeze())
    });
    match cut {
        Ok(Some(cut)) => HeaderValue::from_maybe_shared(cut).ok(),
        _ => HeaderValue::from_bytes(bytes).ok(),
    }
}

/// Marks a value that is new on every request (trace and span ids, request ids) for HPACK's
/// never-indexed literal form. Indexed, each one would be added to the HTTP/2 connection's
/// dynamic table on both sides, evict entries that do repeat, and be compared against the
/// earlier requests' ids already there before the next one is added (callgrind: about 50 value
/// comparisons and a table insertion per request). `sensitive` changes nothing else but
/// `Debug`, which prints `Sensitive` for the value.
pub fn never_indexed(value: &mut HeaderValue) {
    value.set_sensitive(true);
}

/// The `tracestate` to send on, from every `tracestate` field received: the valid members, in
/// order, without repeated keys, at most 32 and 512 characters. Members are borrowed from the
/// request; a new value is built only when the received one cannot be sent as is.
fn pass_on_tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut members: [&[u8]; MAX_MEMBERS] = [&[]; MAX_MEMBERS];
    let mut keys: [&[u8]; MAX_MEMBERS] = [&[]; MAX_MEMBERS];
    let mut kept = 0;
    let mut fields = 0;
    let mut received = None;
    let mut dropped = false;
    for field in headers.get_all(&TRACESTATE) {
        fields += 1;
        received = Some(field);
        for member in field.as_bytes().split(|c| *c == b',') {
            let member = trim_ows(member);
            if member.is_empty() {
                continue;
            }
            let Some(key) = member_key(member) else {
                dropped = true;
                continue;
            };
            if kept == MAX_MEMBERS || keys[..kept].contains(&key) {
                dropped = true;
                continue;
            }
            members[kept] = member;
            keys[kept] = key;
            kept += 1;
        }
    }
    if kept == 0 {
        return None;
    }
    if let (1, false, Some(received)) = (fields, dropped, received) {
        if received.len() <= MAX_TRACESTATE_LEN {
            return Some(received.clone());
        }
    }
    let list = truncate(&mut members, kept);
    let mut out = Vec::with_capacity(joined_len(list));
    for (i, member) in list.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(member);
    }
    HeaderValue::from_maybe_shared(Bytes::from(out)).ok()
}

/// Drops members until the list fits in 512 characters (§3.3.1.5): those longer than 128
/// characters first, rightmost first, then members from the right. Returns what is left.
fn truncate<'m, 'a>(members: &'m mut [&'a [u8]], mut kept: usize) -> &'m [&'a [u8]] {
    while joined_len(&members[..kept]) > MAX_TRACESTATE_LEN {
        if let Some(i) = members[..kept].iter().rposition(|m| m.len() > LONG_MEMBER) {
            members.copy_within(i + 1..kept, i);
        }
        kept -= 1;
    }
    &members[..kept]
}

fn joined_len(members: &[&[u8]]) -> usize {
    members.iter().map(|m| m.len()).sum::<usize>() + members.len().saturating_sub(1)
}

/// OWS (RFC 9110 §5.6.3): spaces and horizontal tabs.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The key of a valid `key=value` list member.
fn member_key(member: &[u8]) -> Option<&[u8]> {
    let eq = member.iter().position(|c| *c == b'=')?;
    let (key, value) = (&member[..eq], &member[eq + 1..]);
    (valid_key(key) && valid_value(value)).then_some(key)
}

fn valid_key(key: &[u8]) -> bool {
    let keychar = |c: &u8| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || matches!(c, b'_' | b'-' | b'*' | b'/' | b'@')
    };
    key.len() <= MAX_KEY_LEN
        && key
            .first()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && key.iter().all(keychar)
}

fn valid_value(value: &[u8]) -> bool {
    let nblk = |c: &u8| matches!(c, 0x21..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e);
    value.len() <= MAX_VALUE_LEN
        && value.last().is_some_and(nblk)
        && value.iter().all(|c| *c == b' ' || nblk(c))
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
        if let Ok(mut v) = HeaderValue::from_str(&v) {
            never_indexed(&mut v);
            headers.insert(&B3, v);
        }
    } else {
        for (name, value) in [
            (&B3_TRACE_ID, trace),
            (&B3_SPAN_ID, span),
            (&B3_SAMPLED, flag.to_string()),
        ] {
            if let Ok(mut v) = HeaderValue::from_str(&value) {
                never_indexed(&mut v);
                headers.insert(name, v);
            }
        }
        match parent_hex.and_then(|p| HeaderValue::from_str(&p).ok()) {
            Some(mut p) => {
                never_indexed(&mut p);
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

/// Each byte's value as a lower-case hex digit, or `NOT_HEX`.
static HEX_VALUES: [u8; 256] = {
    let mut values = [NOT_HEX; 256];
    let mut digit = 0;
    while digit < 16 {
        values[HEX_DIGITS[digit] as usize] = digit as u8;
        digit += 1;
    }
    values
};
const NOT_HEX: u8 = 0x10;

/// Decoded by table with one check at the end: the inbound side decodes 24 bytes of ids from
/// every `traceparent`, and a branch per digit cost ~400 instructions per request (issue #15).
fn hex_array<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    let mut seen = 0;
    for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (high, low) = (HEX_VALUES[pair[0] as usize], HEX_VALUES[pair[1] as usize]);
        seen |= high | low;
        *byte = high << 4 | low;
    }
    (seen & NOT_HEX == 0).then_some(out)
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Each byte's two hex digits, so that writing an id is one table read per byte (ids are written
/// on every request: `traceparent`, `x-request-id`).
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut pairs = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [HEX_DIGITS[b >> 4], HEX_DIGITS[b & 0xf]];
        b += 1;
    }
    pairs
};

/// Writes `bytes` as lower-case hex into `out`, which is twice as long.
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// Appends `bytes` as lower-case hex to `s`.
pub fn push_hex(s: &mut String, bytes: &[u8]) {
    for b in bytes {
        let [high, low] = HEX_PAIRS[usize::from(*b)];
        s.push(char::from(high));
        s.push(char::from(low));
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
