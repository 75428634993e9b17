//! Keeping one destination's failures from becoming the caller's: the layers between routing and
//! forwarding. Where each decision is made:
//! - `timeout`: the overall request deadline (route or cluster timeout, and the caller's
//!   `grpc-timeout`), covering every attempt;
//! - `retry`: whether and when another attempt is made (conditions, idempotency, replayable body,
//!   backoff) and whether the `budget` allows it;
//! - `breaker`: per-cluster limits on requests, pending connections and retries in flight;
//! - `outlier`: ejecting endpoints that keep failing, consulted by the balancer;
//! - `shed`: the listener-wide bound on requests in flight (load shedding), in front of routing.

pub mod breaker;
pub mod budget;
pub mod outlier;
pub mod replay;
pub mod retry;
pub mod shed;
pub mod timeout;
