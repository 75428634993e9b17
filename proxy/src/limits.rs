//! Resource limits: what one slow client, one flood or one burst may cost the proxy. Every bound
//! a hostile or overloaded peer could otherwise push without end (header bytes, connections,
//! concurrent streams, requests in flight, time spent waiting for bytes) has its knob here, so
//! that one struct travels from the command line to the listeners and the request stack.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Limits {
    /// An HTTP/1 request head must arrive within this (slowloris).
    pub header_read_timeout: Duration,
    /// Largest HTTP/1 request head (request line plus headers), in bytes.
    pub max_header_bytes: usize,
    /// An HTTP/1 request body may stall this long before it is answered 408 (slow body).
    pub body_idle_timeout: Duration,
    /// Largest decoded HTTP/2 header list, in bytes (bounds CONTINUATION floods).
    pub max_header_list_size: u32,
    /// Concurrent HTTP/2 streams a peer may open on one connection.
    pub max_concurrent_streams: u32,
    /// Open connections per listener; more are accepted and closed at once.
    pub max_connections: usize,
    /// Requests each listener (inbound, outbound) works on at once; more are answered 503 at once
    /// (load shedding, `resilience::shed`).
    pub max_in_flight_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            body_idle_timeout: Duration::from_secs(60),
            max_header_list_size: 64 * 1024,
            max_concurrent_streams: 1000,
            max_connections: 20_000,
            max_in_flight_requests: 10_000,
        }
    }
}
