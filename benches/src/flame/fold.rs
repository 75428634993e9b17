//! `perf script` output folded into stacks: one line per distinct stack, root first, frames
//! joined by `;`, with its sample count (the format flame graph tools read). The thread's name is
//! the root, so a sidecar's runtime workers, its span exporter and its blocking threads stand
//! apart.

use std::collections::BTreeMap;

/// Stack (root first, `;`-joined) → samples.
pub type Folded = BTreeMap<String, u64>;

/// Folds the text `perf script` prints: a block per sample, its header line first (the thread's
/// name, pid, time, event), then one indented line per frame, innermost first (`addr symbol+off
/// (dso)`), then a blank line.
pub fn fold(script: &str) -> Folded {
    let mut folded = Folded::new();
    let mut frames: Vec<String> = Vec::new();
    let mut thread: Option<String> = None;
    for line in script.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if let Some(thread) = thread.take() {
                let mut stack = thread;
                for frame in frames.iter().rev() {
                    stack.push(';');
                    stack.push_str(frame);
                }
                *folded.entry(stack).or_default() += 1;
            }
            frames.clear();
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            if thread.is_some() {
                frames.push(frame_name(line.trim()));
            }
        } else {
            thread = Some(thread_name(line));
        }
    }
    folded
}

/// The thread's name from a sample's header (`tokio-runtime-w 1234/1240 [001] 5.6: 1 cpu-clock:`).
/// A name may hold spaces, so it is everything before the first field that starts with a digit.
fn thread_name(header: &str) -> String {
    let words: Vec<&str> = header.split_whitespace().collect();
    let end = (words.iter())
        .position(|w| w.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or(words.len());
    let name = words[..end].join(" ");
    if name.is_empty() {
        "[thread]".to_string()
    } else {
        name.replace(';', ":")
    }
}

/// `55d0c0a1b2c3 hyper::proto::h1::io::Buffered::poll_read+0x2a (/usr/bin/x)` → the function,
/// without the address, offset, Rust's hash suffix or the object; an unknown symbol is named by
/// its object (`[unknown] (libc.so.6)` → `[libc.so.6]`).
fn frame_name(frame: &str) -> String {
    let rest = frame.split_once(char::is_whitespace).map_or("", |(_, r)| r);
    let (symbol, object) = match rest.rfind(" (") {
        Some(at) if rest.ends_with(')') => (&rest[..at], &rest[at + 2..rest.len() - 1]),
        _ => (rest, ""),
    };
    let symbol = symbol.trim();
    if symbol.is_empty() || symbol == "[unknown]" {
        let object = object.rsplit('/').next().unwrap_or(object);
        return format!("[{}]", if object.is_empty() { "unknown" } else { object });
    }
    let symbol = match symbol.rfind("+0x") {
        Some(at) => &symbol[..at],
        None => symbol,
    };
    strip_hash(symbol).replace(';', ":")
}

/// Drops a legacy Rust mangling hash (`::h` and 16 hex digits) at the end.
fn strip_hash(symbol: &str) -> &str {
    match symbol.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            head
        }
        _ => symbol,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "\
trellis-proxy 4242/4243 [001] 100.000001:    1001001 cpu-clock:pppH:
\t    55d0c0a1b2c3 h2::codec::framed_read::decode_frame::h0123456789abcdef+0x2a (/work/trellis-proxy)
\t    55d0c0a1b000 h2::proto::connection::Connection::poll+0x10 (/work/trellis-proxy)
\t    7f00000000aa [unknown] (/usr/lib/x86_64-linux-gnu/libc.so.6)

tokio-runtime-w 4242/4244 [000] 100.000002:    1001001 cpu-clock:pppH:
\t    55d0c0a1b2c3 h2::codec::framed_read::decode_frame::h0123456789abcdef+0x30 (/work/trellis-proxy)
\t    55d0c0a1b000 h2::proto::connection::Connection::poll+0x10 (/work/trellis-proxy)
\t    7f00000000aa [unknown] (/usr/lib/x86_64-linux-gnu/libc.so.6)

tokio-runtime-w 4242/4244 [000] 100.000003:    1001001 cpu-clock:pppH:
\t    55d0c0a1b2c3 h2::codec::framed_read::decode_frame::h0123456789abcdef+0x44 (/work/trellis-proxy)
\t    55d0c0a1b000 h2::proto::connection::Connection::poll+0x10 (/work/trellis-proxy)
\t    7f00000000aa [unknown] (/usr/lib/x86_64-linux-gnu/libc.so.6)
";

    #[test]
    fn samples_fold_into_stacks_root_first_by_thread() {
        let folded = fold(SCRIPT);
        let tail = "[libc.so.6];h2::proto::connection::Connection::poll;\
                    h2::codec::framed_read::decode_frame";
        let want: Folded = [
            (format!("tokio-runtime-w;{tail}"), 2),
            (format!("trellis-proxy;{tail}"), 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(folded, want);
    }

    #[test]
    fn frames_lose_addresses_offsets_and_hashes_only() {
        assert_eq!(
            frame_name("abc core::ptr::drop_in_place<x::Y>+0x1 (/b)"),
            "core::ptr::drop_in_place<x::Y>"
        );
        assert_eq!(frame_name("abc memcpy (/lib/libc.so.6)"), "memcpy");
        assert_eq!(
            frame_name("abc [unknown] ([kernel.kallsyms])"),
            "[[kernel.kallsyms]]"
        );
        assert_eq!(frame_name("abc a::b::hxyz (/b)"), "a::b::hxyz");
        assert_eq!(
            thread_name("my worker 1/2 [000] 1.0: 1 cpu-clock:"),
            "my worker"
        );
    }
}
