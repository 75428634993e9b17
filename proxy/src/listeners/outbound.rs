//! The outbound listener: the local app's plain HTTP/1.1 or h2c requests for other services.
//! Each request goes through rescue → route → observe (trace context, span, metrics, access log)
//! → fault → timeout → retry → breaker → forward; see `http`, `telemetry` and `resilience`.
//! In transparent mode each connection is first classified by `transparent::outbound`.

use super::serve_connection;
use crate::config::SnapshotStore;
use crate::drain::DrainWatch;
use crate::http::{
    fault::FaultLayer, forward::ForwardToMesh, rescue::RescueLayer, route::RouteLayer, Body,
};
use crate::resilience::{breaker::BreakerLayer, retry::RetryLayer, timeout::TimeoutLayer};
use crate::telemetry::io::Counted;
use crate::telemetry::metrics::Direction;
use crate::telemetry::observe::{ObserveLayer, Telemetry};
use hyper::body::Incoming;
use std::sync::Arc;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

pub async fn serve(
    listener: TcpListener,
    store: SnapshotStore,
    telemetry: Arc<Telemetry>,
    drain: DrainWatch,
    transparent: Option<super::transparent::Outbound>,
) {
    let metrics = telemetry.metrics.clone();
    let service = ServiceBuilder::new()
        .map_request(|req: http::Request<Incoming>| req.map(Body::from))
        .layer(RescueLayer)
        .layer(RouteLayer::new(store))
        .layer(ObserveLayer::outbound(telemetry))
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
                if let Some(ctx) = &transparent {
                    let conn = super::transparent::outbound(
                        stream,
                        ctx.clone(),
                        service.clone(),
                        drain.clone(),
                    );
                    tokio::spawn(conn);
                    continue;
                }
                let stream = Counted::new(stream, metrics.clone(), Direction::Outbound);
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
