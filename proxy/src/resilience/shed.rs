//! Load shedding: a bound on the requests one listener works on at once
//! (`Limits::max_in_flight_requests`). A request over the bound is answered at once with 503
//! (`ProxyError::Overloaded`, which `rescue` labels in `trellis-error`) and never goes further, so
//! an offered load above what the proxy or its destination can serve turns into fast refusals
//! instead of a queue that grows without end and takes every caller's latency with it.
//!
//! The layer sits right under `rescue`, before routing and telemetry, so a refusal costs as little
//! as possible; refusals are counted in `trellis_requests_shed`, not in `trellis_requests`.
//!
//! Admission is a compare-and-swap on a shared counter: no lock, no queue, no waiting. The slot
//! is held by the response body (`Body::hold_in_flight`) until the body ends or is dropped, since a
//! streamed answer still costs the proxy buffers and a connection until then. Inbound and outbound
//! each have their own budget: with one shared budget, inbound requests waiting on the app's own
//! outbound calls could take every slot and starve those calls.
//!
//! On the outbound listener the budget is shared fairly between the app's client connections
//! (`limits::Budget::try_take_for`): each layer value stands for one connection
//! (`for_connection` makes a new one), so one client holding hundreds of abandoned or slow
//! streams is shed before the other clients are. Not on the inbound listener: its clients are
//! peer sidecars, each the sum of many apps' clients already shared fairly at its own outbound,
//! and a fair share that keeps room for one more connection would halve what a lone caller may
//! send. There a connection's slots are only counted (`Share::counted`): on both listeners the
//! count tells the connection's reader whether a response is still owed (`listeners::head_wait`).

use crate::errors::ProxyError;
use crate::http::Body;
use crate::limits::{Budget, Share};
use crate::telemetry::metrics::{Direction, ProxyMetrics};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// The tower layer; clones share one budget and one client connection's share of it.
#[derive(Clone, Debug)]
pub struct ShedLayer {
    budget: Arc<Budget>,
    share: Arc<Share>,
}

impl ShedLayer {
    /// The layer of one client connection taking its fair share of `budget`.
    pub fn new(budget: Arc<Budget>) -> ShedLayer {
        ShedLayer {
            budget,
            share: Share::new(),
        }
    }

    /// The layer of one of the proxy's listeners, with the budget its metrics report: shared
    /// fairly between client connections on the outbound listener, only counted per connection
    /// on the inbound one (see the module comment).
    pub fn of(metrics: &ProxyMetrics, listener: Direction) -> ShedLayer {
        let budget = metrics.in_flight(listener).clone();
        let share = match listener {
            Direction::Outbound => Share::new(),
            Direction::Inbound => Share::counted(),
        };
        ShedLayer { budget, share }
    }

    /// The layer for another client connection on the same budget.
    pub fn for_connection(&self) -> ShedLayer {
        ShedLayer {
            budget: self.budget.clone(),
            share: self.share.another(),
        }
    }

    /// The connection's requests in flight, counted until their response bodies end.
    pub fn share(&self) -> &Arc<Share> {
        &self.share
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            budget: self.budget.clone(),
            share: self.share.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Shed<S> {
    inner: S,
    budget: Arc<Budget>,
    share: Arc<Share>,
}

impl<S> tower::Service<http::Request<Body>> for Shed<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = ProxyError>,
{
    type Response = http::Response<Body>;
    type Error = ProxyError;
    type Future = ShedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        // Admission is decided per request in `call`: waiting here for a free slot would be the
        // very queue this layer exists to prevent.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some(admitted) = self.budget.try_take_for(&self.share) else {
            let max = self.budget.max();
            return ShedFuture::Refused { max };
        };
        ShedFuture::Admitted {
            inner: self.inner.call(req),
            admitted: Some(admitted),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer holding the admitted slot, or the refusal. Not boxed: it runs
    /// per request, and a box is an allocation and a virtual call more (issue #15).
    #[project = ShedProj]
    pub enum ShedFuture<F> {
        Admitted { #[pin] inner: F, admitted: Option<crate::limits::Slot> },
        Refused { max: usize },
    }
}

impl<F> Future for ShedFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, ProxyError>>,
{
    type Output = Result<http::Response<Body>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ShedProj::Admitted { inner, admitted } => {
                // On an error the slot is dropped with the future; `rescue` answers with a body
                // of its own.
                let rsp = ready!(inner.poll(cx))?;
                Poll::Ready(Ok(match admitted.take() {
                    Some(slot) => rsp.map(|b| b.hold_in_flight(slot)),
                    None => rsp,
                }))
            }
            ShedProj::Refused { max } => Poll::Ready(Err(ProxyError::Overloaded { max: *max })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use std::time::Duration;
    use tokio::sync::{mpsc, oneshot};
    use tower::{Layer, Service, ServiceExt};

    /// Each call the inner service saw, as the channel its answer is awaited on.
    type Calls = mpsc::UnboundedReceiver<oneshot::Sender<Response<Body>>>;

    /// An inner service whose answers the test hands out one by one, counting the calls it saw.
    fn parked() -> (
        impl Service<
                Request<Body>,
                Response = Response<Body>,
                Error = ProxyError,
                Future = crate::http::ResponseFuture,
            > + Clone,
        Calls,
    ) {
        let (calls, seen) = mpsc::unbounded_channel();
        let svc = tower::service_fn(move |_req: Request<Body>| {
            let (answer, answered) = oneshot::channel();
            let _ = calls.send(answer);
            Box::pin(async move { answered.await.map_err(|_| ProxyError::NotReady("test")) })
                as crate::http::ResponseFuture
        });
        (svc, seen)
    }

    fn ok_with(body: &'static str) -> Response<Body> {
        Response::new(Body::full(body))
    }

    async fn call<S>(svc: &mut S) -> S::Future
    where
        S: Service<Request<Body>>,
    {
        match svc.ready().await {
            Ok(s) => s.call(Request::new(Body::empty())),
            Err(_) => panic!("the shed layer is always ready"),
        }
    }

    #[tokio::test]
    async fn over_the_limit_is_refused_at_once_and_never_reaches_the_inner_service() {
        let budget = Budget::new(2);
        let (inner, mut seen) = parked();
        let mut svc = ShedLayer::new(budget.clone()).layer(inner);
        let first = tokio::spawn(call(&mut svc).await);
        let second = tokio::spawn(call(&mut svc).await);
        let answers = [seen.recv().await, seen.recv().await];
        assert_eq!(budget.in_use(), 2);

        // The third is answered without waiting, however long the first two take.
        let third = tokio::time::timeout(Duration::from_millis(500), call(&mut svc).await).await;
        match third {
            Ok(Err(ProxyError::Overloaded { max: 2 })) => {}
            other => panic!("expected an immediate Overloaded error, got {other:?}"),
        }
        assert!(seen.try_recv().is_err(), "the inner service never saw it");
        assert_eq!(budget.refused(), 1);
        assert_eq!(
            crate::http::rescue::error_response(&ProxyError::Overloaded { max: 2 }, false).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );

        for answer in answers.into_iter().flatten() {
            let _ = answer.send(ok_with("done"));
        }
        for task in [first, second] {
            let rsp = task.await.ok().and_then(Result::ok);
            let body = match rsp {
                Some(r) => r.into_body().collect().await.map(|c| c.to_bytes()).ok(),
                None => None,
            };
            assert_eq!(body, Some(Bytes::from_static(b"done")));
        }
        assert_eq!(budget.in_use(), 0, "finished bodies give their slots back");
    }

    #[tokio::test]
    async fn the_slot_lasts_until_the_body_ends_or_is_dropped() {
        let budget = Budget::new(1);
        let (inner, mut seen) = parked();
        let mut svc = ShedLayer::new(budget.clone()).layer(inner);

        // Headers answered, body not yet read: still in flight.
        let pending = call(&mut svc).await;
        if let Some(answer) = seen.recv().await {
            let _ = answer.send(ok_with("streamed"));
        }
        let rsp = pending.await.ok();
        assert_eq!(budget.in_use(), 1);
        assert!(matches!(
            call(&mut svc).await.await,
            Err(ProxyError::Overloaded { .. })
        ));

        // Read to the end: the slot is free before the body value itself is gone.
        let mut body = rsp.map(Response::into_body);
        if let Some(b) = body.as_mut() {
            while let Some(Ok(_)) = b.frame().await {}
        }
        assert_eq!(budget.in_use(), 0);
        drop(body);

        // Dropped unread (the client went away): the slot comes back too.
        let pending = call(&mut svc).await;
        if let Some(answer) = seen.recv().await {
            let _ = answer.send(ok_with("never read"));
        }
        let rsp = pending.await.ok();
        assert_eq!(budget.in_use(), 1);
        drop(rsp);
        assert_eq!(budget.in_use(), 0);
        assert_eq!(budget.refused(), 1);
    }

    #[tokio::test]
    async fn an_inner_error_gives_the_slot_back() {
        let budget = Budget::new(1);
        let (inner, mut seen) = parked();
        let mut svc = ShedLayer::new(budget.clone()).layer(inner);
        let pending = call(&mut svc).await;
        drop(seen.recv().await); // the inner service fails: its answer channel closes
        assert!(matches!(pending.await, Err(ProxyError::NotReady(_))));
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn behind_rescue_a_shed_request_is_503_overloaded_or_grpc_unavailable() {
        let budget = Budget::new(0);
        let (inner, _seen) = parked();
        let svc = crate::http::rescue::RescueLayer.layer(ShedLayer::new(budget).layer(inner));
        let why = |rsp: &Response<Body>, name: &str| {
            (rsp.headers().get(name)).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };

        let rsp =
            (svc.clone().oneshot(Request::new(Body::empty())).await).unwrap_or_else(|e| match e {});
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let label = why(&rsp, "trellis-error").unwrap_or_default();
        assert!(label.starts_with("overloaded"), "{label}");

        let grpc = Request::builder()
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(Body::empty())
            .unwrap_or_default();
        let rsp = svc.oneshot(grpc).await.unwrap_or_else(|e| match e {});
        assert_eq!(rsp.status(), StatusCode::OK, "trailers-only");
        assert_eq!(
            why(&rsp, "grpc-status").as_deref(),
            Some("14"),
            "UNAVAILABLE"
        );
    }

    #[tokio::test]
    async fn a_zero_budget_sheds_everything() {
        let budget = Budget::new(0);
        let (inner, mut seen) = parked();
        let mut svc = ShedLayer::new(budget.clone()).layer(inner);
        for _ in 0..3 {
            assert!(call(&mut svc).await.await.is_err());
        }
        assert!(seen.try_recv().is_err());
        assert_eq!(budget.refused(), 3);
    }

    #[tokio::test]
    async fn a_connection_over_its_fair_share_is_shed_and_another_is_not() {
        use crate::limits::FAIR_SHARE_FLOOR;
        let budget = Budget::new(2 * FAIR_SHARE_FLOOR);
        let (inner, mut seen) = parked();
        let greedy = ShedLayer::new(budget.clone());
        let mut greedy_svc = greedy.layer(inner.clone());
        let mut other_svc = greedy.for_connection().layer(inner);
        let mut answers = Vec::new();
        let mut pending = Vec::new();
        // The other connection holds one slot: two connections active, and the share (a third
        // of the budget) is raised to the floor.
        pending.push(tokio::spawn(call(&mut other_svc).await));
        answers.extend(seen.recv().await);
        for _ in 0..FAIR_SHARE_FLOOR {
            pending.push(tokio::spawn(call(&mut greedy_svc).await));
            answers.extend(seen.recv().await);
        }
        assert!(
            matches!(
                call(&mut greedy_svc).await.await,
                Err(ProxyError::Overloaded { .. })
            ),
            "over its share, with the budget more than half used"
        );
        pending.push(tokio::spawn(call(&mut other_svc).await));
        answers.extend(seen.recv().await);
        assert_eq!(
            budget.in_use(),
            FAIR_SHARE_FLOOR + 2,
            "the other connection was admitted"
        );
        assert_eq!((budget.refused(), budget.refused_unfair()), (1, 1));
        for answer in answers {
            let _ = answer.send(ok_with("done"));
        }
        for task in pending {
            drop(task.await);
        }
        assert_eq!((budget.in_use(), budget.active_connections()), (0, 0));
    }
}
