//! The discovery RPC on the wire, written by hand instead of tonic's generated server so that a
//! stream owns no encode buffer: each response is assembled once, at its exact size, from the
//! catalog's shared encoded resources (`catalog.rs`), handed to HTTP/2 as one frame and freed once
//! written. (tonic's encoder keeps a per-stream buffer as large as the largest response it ever
//! sent, the first full snapshot, for the stream's whole life.) Requests are decoded with prost
//! through tonic's `Streaming`, with a small initial buffer. The path, content type, trailers and
//! errors are what the generated server produces, so clients see no difference.
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use tokio::sync::mpsc;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder, Streaming};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::Status;
use trellis_api::discovery::DeltaDiscoveryRequest;

use super::catalog::{field_len, put_field, put_string, string_len};
use super::diff::Delta;
use super::DiscoveryService;

const SERVICE: &str = "trellis.discovery.v1.AggregatedDiscovery";
const METHOD_PATH: &str = "/trellis.discovery.v1.AggregatedDiscovery/DeltaResources";

/// What a stream task hands to its response body: one encoded gRPC message, or the final status.
pub type Reply = Result<Bytes, Status>;

/// The gRPC service to add to tonic's router.
#[derive(Clone)]
pub struct DiscoveryServer {
    service: DiscoveryService,
}

impl DiscoveryServer {
    pub fn new(service: DiscoveryService) -> Self {
        DiscoveryServer { service }
    }
}

impl NamedService for DiscoveryServer {
    const NAME: &'static str = SERVICE;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send + 'static>>;

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for DiscoveryServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() != METHOD_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let service = self.service.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let metadata = MetadataMap::from_headers(parts.headers);
            let requests = Streaming::new_request(RequestDecoder, body, None, None);
            match service.open(&metadata, requests).await {
                Ok(replies) => {
                    let body = tonic::body::Body::new(ResponseBody {
                        replies,
                        done: false,
                    });
                    let mut response = http::Response::new(body);
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/grpc"),
                    );
                    Ok(response)
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// Decodes requests with prost. Requests are small (an ACK is a type URL and a nonce), so the
/// buffer starts small; it grows only for a large resume request.
struct RequestDecoder;

impl Decoder for RequestDecoder {
    type Item = DeltaDiscoveryRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        prost::Message::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding a discovery request: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(256, 256)
    }
}

/// The response stream: each reply is one gRPC message; the end (or an error) is the trailers.
struct ResponseBody {
    replies: mpsc::Receiver<Reply>,
    done: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(self.replies.poll_recv(cx)) {
            Some(Ok(message)) => return Poll::Ready(Some(Ok(Frame::data(message)))),
            Some(Err(status)) => trailers(&status),
            None => trailers(&Status::ok("")),
        };
        self.done = true;
        Poll::Ready(Some(Ok(Frame::trailers(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // Only a message that cannot be a header value gets here: keep the code.
        map.clear();
        map.insert(Status::GRPC_STATUS, HeaderValue::from(status.code() as i32));
    }
    map
}

/// One `DeltaDiscoveryResponse` as a gRPC message (5-byte prefix included), at its exact size.
pub fn encode_response(
    type_url: &str,
    system_version: &str,
    delta: &Delta,
    nonce: &str,
) -> Result<Bytes, Status> {
    let len = string_len(1, type_url)
        + string_len(2, system_version)
        + delta.resources.iter().map(Bytes::len).sum::<usize>()
        + delta.removed.iter().map(|n| field_len(4, n)).sum::<usize>()
        + string_len(5, nonce);
    let prefix = u32::try_from(len)
        .map_err(|_| Status::internal(format!("a {type_url} response of {len} bytes")))?;
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(prefix);
    put_string(&mut buf, 1, type_url);
    put_string(&mut buf, 2, system_version);
    for resource in &delta.resources {
        buf.put_slice(resource);
    }
    for name in &delta.removed {
        put_field(&mut buf, 4, name);
    }
    put_string(&mut buf, 5, nonce);
    debug_assert_eq!(buf.len(), 5 + len);
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use trellis_api::discovery::{DeltaDiscoveryResponse, Resource};

    #[test]
    fn responses_decode_as_the_generated_message() {
        let resource = Resource {
            name: "default/web".into(),
            version: "00000000000000aa".into(),
            payload: vec![1, 2, 3],
        };
        let rsp = DeltaDiscoveryResponse {
            resources: vec![resource.clone()],
            ..Default::default()
        };
        let delta = Delta {
            resources: vec![rsp.encode_to_vec().into()],
            removed: vec!["default/gone".into(), "".into()],
        };
        let bytes = encode_response("trellis.config.v1.Endpoints", "7", &delta, "1-2").unwrap();
        assert_eq!(bytes[0], 0);
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len, bytes.len() - 5);
        let decoded = DeltaDiscoveryResponse::decode(&bytes[5..]).unwrap();
        assert_eq!(
            decoded,
            DeltaDiscoveryResponse {
                type_url: "trellis.config.v1.Endpoints".into(),
                system_version_info: "7".into(),
                resources: vec![resource],
                removed_resources: vec!["default/gone".into(), "".into()],
                nonce: "1-2".into(),
            }
        );
    }
}
