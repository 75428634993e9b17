//! External programs some suites drive (Prometheus, promtool, testssl.sh…). `.ci/run` installs
//! them; on a developer machine without them the test says loudly that it was skipped, and under
//! CI (`CI` set) a missing tool is a failure, never a silent pass.

use std::path::PathBuf;

/// The tool's path, or None after announcing the skip. Panics under CI.
pub fn require(tool: &str, why: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("`{tool}` is required in CI ({why}); .ci/run should have installed it");
        }
        eprintln!("SKIPPED: `{tool}` is not installed ({why}); run .ci/run or install it to run this test");
    }
    found
}

/// Percent-encodes a query-string value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
