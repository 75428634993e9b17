//! `GET /tap`: a live, bounded stream of request summaries (newline-delimited JSON). The telemetry
//! layer asks `attached()` (one relaxed load) and builds a summary only while someone watches, so
//! a sidecar nobody taps pays nothing more. The last requests for `/explain` are remembered
//! whether tapped or not (`recent.rs`), held here because the same layer hands both over.
//!
//! Query: `max` (lines, default 100), `seconds` (default 60), `route`, `direction`.

use bytes::Bytes;
use http_body::Frame;
use serde_json::Value;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// A watcher further behind than this loses lines (and is told how many).
const QUEUE: usize = 1024;
const MAX_LINES: u64 = 100_000;
const MAX_SECONDS: u64 = 3600;

pub type TapBody = http_body_util::StreamBody<
    tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, Infallible>>,
>;

#[derive(Debug)]
pub struct Tap {
    watchers: AtomicUsize,
    tx: broadcast::Sender<Arc<Value>>,
    /// Every finished request's record, for `/explain`.
    pub recent: super::recent::RecentRequests,
}

impl Default for Tap {
    fn default() -> Self {
        Tap {
            watchers: AtomicUsize::new(0),
            tx: broadcast::channel(QUEUE).0,
            recent: Default::default(),
        }
    }
}

impl Tap {
    /// Whether a summary of the request finishing now is wanted.
    pub fn attached(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) > 0
    }

    /// Hands one request summary (the access-log line's fields) to the watchers.
    pub fn publish(&self, summary: Value) {
        let _ = self.tx.send(Arc::new(summary));
    }
}

/// What one `/tap` call asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapQuery {
    pub max: u64,
    pub duration: Duration,
    pub route: Option<String>,
    pub direction: Option<String>,
}

impl TapQuery {
    pub fn parse(query: &str) -> Result<TapQuery, String> {
        let mut q = TapQuery {
            max: 100,
            duration: Duration::from_secs(60),
            route: None,
            direction: None,
        };
        for (key, value) in super::explain::pairs(query) {
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{key}={value:?}: expected a whole number"))
            };
            match key.as_str() {
                "max" => q.max = number()?.clamp(1, MAX_LINES),
                "seconds" => q.duration = Duration::from_secs(number()?.clamp(1, MAX_SECONDS)),
                "route" => q.route = Some(value),
                "direction" if value == "inbound" || value == "outbound" => {
                    q.direction = Some(value)
                }
                "direction" => return Err(format!("direction={value:?}: use inbound or outbound")),
                _ => {}
            }
        }
        Ok(q)
    }

    fn wants(&self, summary: &Value) -> bool {
        let is = |key: &str, want: &Option<String>| {
            want.as_deref()
                .is_none_or(|w| summary[key].as_str() == Some(w))
        };
        is("route", &self.route) && is("direction", &self.direction)
    }
}

/// Adds who called whom: this sidecar is the source of outbound requests, the destination of
/// inbound ones; the peer is the other side.
fn with_sides(summary: &Value, own: &str) -> Value {
    let mut line = summary.clone();
    let peer = summary["peer_identity"].clone();
    let (source, destination) = match summary["direction"].as_str() {
        Some("inbound") => (peer, own.into()),
        _ => (own.into(), peer),
    };
    line["source"] = source;
    line["destination"] = destination;
    line
}

/// Starts streaming to one watcher; the stream ends after `max` lines, the time limit, or when the
/// watcher goes away, and the tap detaches when the last watcher ends.
pub fn watch(tap: &Arc<Tap>, query: TapQuery, own_identity: String) -> TapBody {
    let mut rx = tap.tx.subscribe();
    tap.watchers.fetch_add(1, Ordering::Relaxed);
    let detach = Detach(tap.clone());
    let (tx, out) = mpsc::channel(16);
    tokio::spawn(async move {
        let _detach = detach;
        let deadline = tokio::time::sleep(query.duration);
        tokio::pin!(deadline);
        let mut sent = 0;
        while sent < query.max {
            let line = tokio::select! {
                _ = &mut deadline => break,
                _ = tx.closed() => break,
                next = rx.recv() => match next {
                    Ok(summary) if query.wants(&summary) => with_sides(&summary, &own_identity),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => serde_json::json!({ "dropped": n }),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            };
            let frame = Frame::data(Bytes::from(format!("{line}\n")));
            if tx.send(Ok(frame)).await.is_err() {
                break;
            }
            sent += 1;
        }
    });
    http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(out))
}

struct Detach(Arc<Tap>);

impl Drop for Detach {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn summary(route: &str, direction: &str) -> Value {
        serde_json::json!({ "route": route, "direction": direction, "peer_identity": "spiffe://t/peer" })
    }

    #[tokio::test]
    async fn streams_matching_summaries_up_to_max_then_detaches() {
        let tap = Arc::new(Tap::default());
        assert!(!tap.attached());
        let query = TapQuery::parse("max=2&route=api").unwrap_or_else(|e| panic!("{e}"));
        let body = watch(&tap, query, "spiffe://t/me".into());
        assert!(tap.attached());
        for route in ["api", "other", "api", "api"] {
            tap.publish(summary(route, "outbound"));
        }
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<Value> = (text.lines())
            .map(|l| serde_json::from_str(l).unwrap_or_default())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["source"], "spiffe://t/me");
        assert_eq!(lines[0]["destination"], "spiffe://t/peer");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!tap.attached());
    }

    #[test]
    fn inbound_summaries_name_the_peer_as_source() {
        let line = with_sides(&summary("r", "inbound"), "spiffe://t/me");
        assert_eq!(line["source"], "spiffe://t/peer");
        assert_eq!(line["destination"], "spiffe://t/me");
    }

    #[test]
    fn bad_queries_say_what_to_write() {
        let e = TapQuery::parse("max=lots").err().unwrap_or_default();
        assert_eq!(e, "max=\"lots\": expected a whole number");
        let e = TapQuery::parse("direction=up").err().unwrap_or_default();
        assert_eq!(e, "direction=\"up\": use inbound or outbound");
    }
}
