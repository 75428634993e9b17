//! `trellis sample-app`: the workload the demo puts behind each sidecar. It serves HTTP/1.1 and
//! h2c on one port (detected per connection), answers GET/HEAD with a JSON description of the
//! request (which replica answered, and the caller identity the inbound sidecar vouched for), and
//! streams any other request's body back, so both balancing and mTLS identity are visible with
//! nothing but curl.

use anyhow::Context;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Header the inbound sidecar sets to the verified SPIFFE ID of the calling workload.
const CLIENT_ID_HEADER: &str = "trellis-client-id";

#[derive(Debug, clap::Args)]
pub struct SampleAppArgs {
    /// Name reported in every response (the demo uses `<service>-<replica>`).
    #[arg(long)]
    name: String,
    /// Address to serve on.
    #[arg(long)]
    listen: SocketAddr,
}

type AppBody = BoxBody<Bytes, hyper::Error>;

pub fn main(args: SampleAppArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        eprintln!("{} serving HTTP/1.1 and h2c on {}", args.name, args.listen);
        tokio::select! {
            () = serve(listener, Arc::from(args.name)) => Ok(()),
            () = stop_signal() => Ok(()),
        }
    })
}

/// Accepts connections until the task is dropped.
async fn serve(listener: TcpListener, name: Arc<str>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning, and keep serving.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let name = name.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let name = name.clone();
                async move { Ok::<_, Infallible>(handle(&name, req)) }
            });
            // Errors here are a client going away mid-request: nothing to report.
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn handle(name: &str, req: Request<Incoming>) -> Response<AppBody> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        // Serializing plain strings cannot fail; an empty object would still be valid JSON.
        let json = serde_json::to_string(&seen(name, &req)).unwrap_or_else(|_| "{}".into()) + "\n";
        let body = Full::new(Bytes::from(json))
            .map_err(|never| match never {})
            .boxed();
        let mut rsp = Response::new(body);
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        return rsp;
    }
    // Stream the body back as it arrives rather than buffering it.
    let mut rsp = Response::new(req.into_body().boxed());
    *rsp.status_mut() = StatusCode::OK;
    rsp
}

/// What the app saw of a request: the JSON a GET returns, fields in this order for people.
#[derive(Debug, serde::Serialize)]
struct Seen<'a> {
    service: &'a str,
    method: &'a str,
    path: &'a str,
    host: Option<String>,
    /// The identity the inbound sidecar verified, or None when the request did not come through
    /// the mesh.
    caller: Option<&'a str>,
}

fn seen<'a, B>(name: &'a str, req: &'a Request<B>) -> Seen<'a> {
    // h2 carries the authority in the URI; HTTP/1.1 in the Host header.
    let host = req.uri().authority().map(|a| a.to_string()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    });
    Seen {
        service: name,
        method: req.method().as_str(),
        path: req.uri().path(),
        host,
        caller: req
            .headers()
            .get(CLIENT_ID_HEADER)
            .and_then(|h| h.to_str().ok()),
    }
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe<B>(name: &str, req: &Request<B>) -> serde_json::Value {
        serde_json::to_value(seen(name, req)).unwrap()
    }

    #[test]
    fn json_reads_service_first() {
        let req = Request::get("/").header("host", "hello").body(()).unwrap();
        let text = serde_json::to_string(&seen("hello-1", &req)).unwrap();
        assert_eq!(
            text,
            r#"{"service":"hello-1","method":"GET","path":"/","host":"hello","caller":null}"#
        );
    }

    #[test]
    fn describes_an_http1_request_with_a_verified_caller() {
        let req = Request::get("/greet?x=1")
            .header("host", "hello")
            .header(
                CLIENT_ID_HEADER,
                "spiffe://trellis.local/ns/default/sa/frontend",
            )
            .body(())
            .unwrap();
        assert_eq!(
            describe("hello-0", &req),
            serde_json::json!({
                "service": "hello-0",
                "method": "GET",
                "path": "/greet",
                "host": "hello",
                "caller": "spiffe://trellis.local/ns/default/sa/frontend",
            })
        );
    }

    #[test]
    fn h2_authority_wins_and_a_missing_caller_is_null() {
        let req = Request::head("http://echo/").body(()).unwrap();
        let json = describe("echo-0", &req);
        assert_eq!(json["host"], "echo");
        assert_eq!(json["method"], "HEAD");
        assert!(json["caller"].is_null());
    }
}
