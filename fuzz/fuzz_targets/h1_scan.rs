//! The HTTP/1 request-framing guard (`proxy/src/listeners/h1_scan.rs`) on arbitrary connection
//! bytes. `Scanner::feed` promises to be a pure function of the bytes fed so far however they are
//! split across reads, since TCP may split them anywhere: the first finding (which request, what
//! problem) and the state afterwards must be the same fed whole as fed in pieces. Refusals are
//! 4xx/5xx statuses.
//!
//! Input layout: two bytes of head limit (hyper's read buffer), one byte choosing the split
//! pattern (0: one byte at a time), then the connection's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_proxy::listeners::h1_scan::{Finding, Problem, Scanner};

/// What a scanner says after reading `data` in the given pieces.
fn scan(
    max_head: usize,
    data: &[u8],
    piece: impl Fn(usize) -> usize,
) -> (Option<Finding>, u64, bool) {
    let mut scanner = Scanner::new(max_head);
    let mut rest = data;
    let mut i = 0;
    let mut finding = None;
    while !rest.is_empty() {
        let n = piece(i).clamp(1, rest.len());
        let (now, later) = rest.split_at(n);
        if let Some(f) = scanner.feed(now) {
            finding = Some(f);
            break;
        }
        rest = later;
        i += 1;
    }
    (finding, scanner.current_request(), scanner.in_body())
}

fuzz_target!(|input: &[u8]| {
    let [hi, lo, pattern, data @ ..] = input else {
        return;
    };
    let max_head = 16 + usize::from(u16::from_be_bytes([*hi, *lo]));
    let whole = scan(max_head, data, |_| usize::MAX);
    let pieces = scan(max_head, data, |i| match pattern {
        0 => 1,
        p => 1 + (usize::from(*p) * (i + 7)) % 23,
    });
    match (whole.0, pieces.0) {
        (a, b) if a != b => panic!("fed whole: {a:?}; in pieces: {b:?}"),
        (Some(f), _) => {
            if let Problem::Head(refusal) = f.problem {
                assert!((400..600).contains(&refusal.status), "{refusal:?}");
            }
        }
        // No finding: both read the same requests and stand at the same place.
        (None, _) => assert_eq!(whole, pieces),
    }
});
