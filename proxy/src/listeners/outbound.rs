//! The outbound listener: the local app's plain HTTP/1.1 or h2c requests for other services.
//! Each request goes through rescue → route → fault → timeout → retry → breaker → forward; see
//! `http` and `resilience` for the layers.

use super::serve_connection;
use crate::config::SnapshotStore;
use crate::drain::DrainWatch;
use crate::http::{
    fault::FaultLayer, forward::ForwardToMesh, rescue::RescueLayer, route::RouteLayer, Body,
};
use crate::resilience::{breaker::BreakerLayer, retry::RetryLayer, timeout::TimeoutLayer};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

pub async fn serve(listener: TcpListener, store: SnapshotStore, drain: DrainWatch) {
    let service = ServiceBuilder::new()
        .map_request(|req: http::Request<Incoming>| req.map(Body::from))
        .layer(RescueLayer)
        .layer(RouteLayer::new(store))
        .layer(FaultLayer)
        .layer(TimeoutLayer)
        .layer(RetryLayer)
        .layer(BreakerLayer)
        .service(ForwardToMesh);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = drain.signaled() => return,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream, service.clone(), drain.clone()));
            }
            Err(e) => {
                // Usually EMFILE: back off briefly rather than spin.
                tracing::warn!(error = %e, "outbound accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
