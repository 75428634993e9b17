//! app → sidecar → mTLS → sidecar → app, with HTTP/1.1 and h2c apps on both ends: what the
//! caller sends is what the destination app receives, and the response comes back intact.

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use trellis_tests::client::{collect, full};
use trellis_tests::{Mesh, Service};

async fn mesh() -> Mesh {
    Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::http1("hello"))
        .service(Service::h2c("grpcish"))
        .start()
        .await
        .expect("mesh starts")
}

fn header<'a>(rsp: &'a http::Response<()>, name: &str) -> Option<&'a str> {
    rsp.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn request_arrives_intact_for_each_protocol_pair() {
    let mesh = mesh().await;
    for app_h2c in [false, true] {
        let client = mesh.client("client", app_h2c);
        for dest in ["hello", "grpcish"] {
            let req = Request::put(format!("http://{dest}/some/path?q=1&r=%20x"))
                .header("x-custom", "value-1")
                .header("x-multi", "a")
                .header("content-type", "application/octet-stream")
                .body(full(Bytes::from_static(b"request body bytes")))
                .expect("request");
            let (rsp, body) = collect(client.send(req).await.expect("sent"))
                .await
                .expect("body");
            assert_eq!(rsp.status(), 200, "app h2c={app_h2c} dest={dest}");
            assert_eq!(body, Bytes::from_static(b"request body bytes"));
            assert_eq!(header(&rsp, "x-echo-method"), Some("PUT"));
            assert!(
                header(&rsp, "x-echo-uri").is_some_and(|u| u.ends_with("/some/path?q=1&r=%20x")),
                "uri: {:?}",
                header(&rsp, "x-echo-uri")
            );
            assert_eq!(header(&rsp, "x-echo-host"), Some(dest));
            assert_eq!(header(&rsp, "x-echo-h-x-custom"), Some("value-1"));
            assert_eq!(
                header(&rsp, "x-echo-h-content-type"),
                Some("application/octet-stream")
            );
            let expected_version = if dest == "hello" {
                "HTTP/1.1"
            } else {
                "HTTP/2.0"
            };
            assert_eq!(
                header(&rsp, "x-echo-version"),
                Some(expected_version),
                "app protocol kept"
            );
            assert_eq!(
                header(&rsp, "x-echo-server"),
                Some(format!("{dest}-{}", if dest == "hello" { 1 } else { 2 }).as_str())
            );
        }
    }
}

#[tokio::test]
async fn eight_mib_streams_both_ways_and_chunked_requests_work() {
    let mesh = mesh().await;
    let payload: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let payload = Bytes::from(payload);
    for app_h2c in [false, true] {
        let client = mesh.client("client", app_h2c);
        for dest in ["hello", "grpcish"] {
            // A body of unknown length: chunked on HTTP/1.1, DATA frames on h2c, sent in 64 KiB
            // pieces with the response streaming back concurrently (the echo app writes as it reads).
            let (mut tx, body) =
                http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(4);
            let req = Request::post(format!("http://{dest}/upload"))
                .body(body.map_err(|never| match never {}).boxed())
                .expect("request");
            let sending = payload.clone();
            let feeder = tokio::spawn(async move {
                for chunk in sending.chunks(64 * 1024) {
                    if tx.send_data(Bytes::copy_from_slice(chunk)).await.is_err() {
                        return false;
                    }
                }
                true
            });
            let rsp = client.send(req).await.expect("sent");
            assert_eq!(rsp.status(), 200);
            if !app_h2c {
                // Shown by the echo: the app received a chunked request, not a content-length one.
                assert!(rsp.headers().get("x-echo-h-content-length").is_none());
            }
            let (_, echoed) = collect(rsp).await.expect("body");
            assert!(feeder.await.expect("feeder"), "whole body sent");
            assert_eq!(echoed.len(), payload.len(), "app h2c={app_h2c} dest={dest}");
            assert!(echoed == payload, "bytes intact");
        }
    }
}
