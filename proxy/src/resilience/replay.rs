//! Request bodies that can be sent again. The first attempt streams the client's body as it
//! arrives and keeps a copy of what passed, up to a limit; a retry replays the copy and then goes
//! on reading from the client. Past the limit the copy is dropped and the request is no longer
//! replayable, so a large upload streams exactly once and is never buffered whole.
//!
//! Every clone reads the same sequence: data pulled from the client by any clone is appended to
//! the shared copy first, so even an attempt that is still being torn down cannot steal bytes
//! from the next one.

use super::super::http::body::BoxError;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

#[derive(Debug)]
pub struct ReplayBody<B = Incoming> {
    shared: Arc<Mutex<Shared<B>>>,
    /// Next chunk of `shared.chunks` this clone returns.
    pos: usize,
    trailers_sent: bool,
    exact_len: Option<u64>,
}

#[derive(Debug)]
struct Shared<B> {
    source: B,
    chunks: Vec<Bytes>,
    buffered: usize,
    limit: usize,
    /// The source has ended (its trailers, if any, are in `trailers`).
    done: bool,
    trailers: Option<HeaderMap>,
    /// Data went past the limit (or the source failed): no more replays.
    overflowed: bool,
}

impl<B: http_body::Body> ReplayBody<B> {
    pub fn new(source: B, limit: usize) -> Self {
        let exact_len = source.size_hint().exact();
        ReplayBody {
            shared: Arc::new(Mutex::new(Shared {
                source,
                chunks: Vec::new(),
                buffered: 0,
                limit,
                done: false,
                trailers: None,
                overflowed: false,
            })),
            pos: 0,
            trailers_sent: false,
            exact_len,
        }
    }

    /// Whether the whole body read so far is still held, so another attempt can resend it.
    pub fn can_replay(&self) -> bool {
        self.shared.lock().map(|s| !s.overflowed).unwrap_or(false)
    }

    /// A fresh reader from the start, or None if the body can no longer be replayed.
    pub fn replay(&self) -> Option<ReplayBody<B>> {
        self.can_replay().then(|| ReplayBody {
            shared: self.shared.clone(),
            pos: 0,
            trailers_sent: false,
            exact_len: self.exact_len,
        })
    }
}

impl<B> http_body::Body for ReplayBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Ok(mut shared) = this.shared.lock() else {
            return Poll::Ready(Some(Err("replay buffer poisoned".into())));
        };
        if !shared.overflowed && this.pos < shared.chunks.len() {
            let chunk = shared.chunks[this.pos].clone();
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if shared.done {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(t) = shared.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut shared.source).poll_frame(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.done = true;
                this.trailers_sent = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                shared.overflowed = true;
                shared.chunks.clear();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        if !shared.overflowed {
                            shared.buffered += data.len();
                            if shared.buffered > shared.limit {
                                shared.overflowed = true;
                                shared.chunks = Vec::new();
                            } else {
                                shared.chunks.push(data.clone());
                                this.pos = shared.chunks.len();
                            }
                        }
                        Frame::data(data)
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => {
                            shared.done = true;
                            shared.trailers = Some(trailers.clone());
                            this.trailers_sent = true;
                            Frame::trailers(trailers)
                        }
                        Err(_) => return Poll::Ready(Some(Err("unknown body frame".into()))),
                    },
                };
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.shared
            .lock()
            .map(|s| {
                s.done
                    && (s.overflowed || self.pos >= s.chunks.len())
                    && (self.trailers_sent || s.trailers.is_none())
            })
            .unwrap_or(true)
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact_len {
            Some(n) if self.pos == 0 => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Chunks = StreamBody<
        futures_util::stream::Iter<
            std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>,
        >,
    >;

    fn source(chunks: &[&'static str], trailers: bool) -> Chunks {
        let mut frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_replay_resends_everything_including_trailers() {
        let first = ReplayBody::new(source(&["ab", "cd"], true), 1024);
        let second = first.replay().expect("replayable before reading");
        let collected = first.collect().await.expect("first");
        assert_eq!(collected.trailers().map(|t| t.len()), Some(1));
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"abcd"));
        let again = second.collect().await.expect("second");
        assert_eq!(again.trailers().map(|t| t.len()), Some(1));
        assert_eq!(again.to_bytes(), Bytes::from_static(b"abcd"));
    }

    #[tokio::test]
    async fn a_partly_read_body_replays_the_part_then_continues() {
        let mut first = ReplayBody::new(source(&["ab", "cd", "ef"], false), 1024);
        let frame = first.frame().await.expect("frame").expect("ok");
        assert_eq!(frame.into_data().ok(), Some(Bytes::from_static(b"ab")));
        let second = first.replay().expect("replayable");
        drop(first);
        let all = second.collect().await.expect("second").to_bytes();
        assert_eq!(all, Bytes::from_static(b"abcdef"));
    }

    #[tokio::test]
    async fn past_the_limit_the_body_streams_once_and_cannot_replay() {
        let first = ReplayBody::new(source(&["abcd", "efgh"], false), 6);
        let probe = first.replay().expect("replayable at start");
        let all = first.collect().await.expect("first").to_bytes();
        assert_eq!(all, Bytes::from_static(b"abcdefgh"), "delivered intact");
        assert!(!probe.can_replay());
        assert!(probe.replay().is_none());
    }
}
