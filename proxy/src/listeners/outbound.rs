//! The outbound listener: the local app's plain HTTP/1.1 or h2c requests for other services.
//! Each request goes through rescue → shed (load shedding) → route → observe (trace context,
//! span, metrics, access log) → fault → timeout → retry → breaker → forward; see `http`,
//! `telemetry` and `resilience`.
//! In transparent mode each connection is first classified by `transparent::outbound`. At most
//! `Limits::max_connections` connections are open at once; more are closed as they arrive.
//! The stack from routing down is built once; rescue and shed are put on top per connection,
//! since the shed layer stands for one client connection's share of the in-flight budget.

use super::Listener;
use super::{serve_connection, HttpServer};
use crate::config::SnapshotStore;
use crate::drain::DrainWatch;
use crate::http::{
    fault::FaultLayer, forward::ForwardToMesh, rescue::RescueLayer, route::RouteLayer, Body,
};
use crate::resilience::shed::ShedLayer;
use crate::resilience::{breaker::BreakerLayer, retry::RetryLayer, timeout::TimeoutLayer};
use crate::telemetry::io::Counted;
use crate::telemetry::metrics::Direction;
use crate::telemetry::observe::{ObserveLayer, Telemetry};
use crate::Limits;
use hyper::body::Incoming;
use std::sync::Arc;
use tower::ServiceBuilder;

pub async fn serve(
    listener: Listener,
    store: SnapshotStore,
    telemetry: Arc<Telemetry>,
    drain: DrainWatch,
    transparent: Option<super::transparent::Outbound>,
    limits: Limits,
) {
    let metrics = telemetry.metrics.clone();
    let server = HttpServer::new(&limits);
    let connections = metrics.connections(Direction::Outbound).clone();
    let shed = ShedLayer::of(&metrics, Direction::Outbound);
    let routed = ServiceBuilder::new()
        .layer(RouteLayer::new(store))
        .layer(ObserveLayer::outbound(telemetry))
        .layer(FaultLayer)
        .layer(TimeoutLayer)
        .layer(RetryLayer)
        .layer(BreakerLayer)
        .service(ForwardToMesh::new(&limits));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = drain.signaled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(permit) = connections.try_take() else {
                    tracing::debug!(%peer, "outbound connection limit reached; closed");
                    continue;
                };
                let shed = shed.for_connection();
                let owed = shed.share().clone();
                let service = ServiceBuilder::new()
                    .map_request(|req: http::Request<Incoming>| req.map(Body::from))
                    .layer(RescueLayer)
                    .layer(shed)
                    .service(routed.clone());
                let _ = stream.set_nodelay(true);
                if let Some(ctx) = &transparent {
                    let conn = super::transparent::outbound(
                        (stream, permit, owed),
                        ctx.clone(),
                        service,
                        drain.clone(),
                        server.clone(),
                    );
                    tokio::spawn(conn);
                    continue;
                }
                let stream = Counted::new(stream, metrics.clone(), Direction::Outbound);
                let conn = serve_connection(
                    stream,
                    (permit, owed),
                    service,
                    drain.clone(),
                    server.clone(),
                );
                tokio::spawn(conn);
            }
            Err(e) => {
                // Usually EMFILE: back off briefly rather than spin.
                tracing::warn!(error = %e, "outbound accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
