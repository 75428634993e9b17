//! Protocol detection (`proxy/src/detect.rs`) on arbitrary first bytes of a connection. Beyond not
//! panicking: the verdicts a caller acts on are final (more bytes never change a "plaintext",
//! HTTP/1 or HTTP/2 answer), and detection never waits for more than `PEEK_LIMIT` bytes, which is
//! all `peek_protocol` can see.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_proxy::detect::{detect, detect_protocol, Detected, Protocol, PEEK_LIMIT};

fuzz_target!(|data: &[u8]| {
    let verdict = detect(data);
    if verdict == Detected::NeedMore {
        assert!(data.len() < 3, "NeedMore on {} bytes", data.len());
    }
    let protocol = detect_protocol(data);
    if protocol.is_none() {
        assert!(
            data.len() < PEEK_LIMIT,
            "still undecided at {} bytes",
            data.len()
        );
    }
    if protocol == Some(Protocol::Http2) {
        assert!(data.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
    }
    // Every prefix that already decided must agree with the whole input.
    for cut in 0..data.len().min(64) {
        let prefix = &data[..cut];
        if detect(prefix) == Detected::Plaintext {
            assert_eq!(
                verdict,
                Detected::Plaintext,
                "prefix of {cut} bytes said plaintext"
            );
        }
        if let Some(p @ (Protocol::Http1 | Protocol::Http2)) = detect_protocol(prefix) {
            assert_eq!(protocol, Some(p), "prefix of {cut} bytes said {p:?}");
        }
    }
});
