//! The load generator tells load shedding apart from other failures: against a server answering in
//! turn 503 with `trellis-error: overloaded…`, 503 with another reason (a circuit breaker), and
//! 200, exactly a third of the measured requests are counted as shed, two thirds as errors (a shed
//! answer is also an error, so saturation searches stop at it) and a third as ok.

#![forbid(unsafe_code)]

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use trellis_bench::load::{self, LoadConfig, Protocol, Target};

fn answer(n: u64) -> Response<Full<Bytes>> {
    let (status, why) = match n % 3 {
        0 => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("overloaded: 8 requests already in flight"),
        ),
        1 => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("circuit breaker: max requests (8)"),
        ),
        _ => (StatusCode::OK, None),
    };
    let mut rsp = Response::new(Full::new(Bytes::from_static(b"x")));
    *rsp.status_mut() = status;
    if let Some(why) = why {
        rsp.headers_mut()
            .insert("trellis-error", http::HeaderValue::from_static(why));
    }
    rsp
}

async fn counted_run(protocol: Protocol) -> load::LoadResult {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let served = Arc::new(AtomicU64::new(0));
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let served = served.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let n = served.fetch_add(1, Ordering::SeqCst);
                    async move { Ok::<_, Infallible>(answer(n)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let mut config = LoadConfig::new(
        Target::plain(addr, "shedder"),
        protocol,
        300.0,
        Duration::from_secs(1),
    );
    config.warmup = Duration::ZERO; // every request sent is measured, so the thirds are exact
    config.connections = 4;
    let result = tokio::time::timeout(Duration::from_secs(10), load::run(&config)).await;
    server.abort();
    match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("load run failed: {e:#}"),
        Err(_) => panic!("load run did not finish within 10 s"),
    }
}

fn check(r: &load::LoadResult) {
    assert_eq!((r.ok, r.shed, r.errors), (100, 100, 200), "{r:?}");
    assert_eq!(r.shed_latency.count, 100);
    assert_eq!(r.shed_uncorrected.count, 100);
    assert_eq!(
        r.latency.count, 100,
        "only successes are in the admitted latency"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_shed_answers_are_counted_apart() {
    check(&counted_run(Protocol::Http1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_shed_answers_are_counted_apart() {
    check(&counted_run(Protocol::H2c).await);
}
