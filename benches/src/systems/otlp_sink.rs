//! A local OTLP/gRPC trace collector that counts and discards what it receives, so the
//! tracing-cost scenario measures what the sidecars spend on spans (building, queueing, batching,
//! sending) and not a real collector's storage.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Default)]
struct Discard {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Discard {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        if self.spans.fetch_add(n as u64, Ordering::Relaxed) == 0 && n > 0 {
            eprintln!("OTLP sink: spans are arriving from the traced sidecars");
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves the sink on `addr` for the life of the runtime; returns the received-span counter.
pub async fn start(addr: SocketAddr) -> anyhow::Result<Arc<AtomicU64>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let spans = Arc::new(AtomicU64::new(0));
    let service = TraceServiceServer::new(Discard {
        spans: spans.clone(),
    });
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
        {
            eprintln!("OTLP sink stopped: {e}");
        }
    });
    Ok(spans)
}
