//! When a peer's proven identity stops being valid: the earliest notAfter of the chain it
//! presented. rustls checks validity only during the handshake, so without this a connection
//! would carry requests for an identity long after its certificate expired. The transport (client
//! side) and the inbound and opaque listeners (server side) retire each connection at this
//! instant with one timer per connection, so it costs nothing per request.
//!
//! "Expired" here means now ≥ notAfter. webpki accepts a certificate through the whole notAfter
//! second (it refuses only once now > notAfter, in whole seconds); the verifiers (`verify`) add
//! this stricter rule, so that a connection retired at notAfter cannot be replaced by a fresh
//! handshake that accepts the same certificate for up to a second more.

use crate::telemetry::metrics::{Direction, ProxyMetrics};
use rustls_pki_types::CertificateDer;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// How long requests already in flight on a retired HTTP connection may take to finish before
/// the connection is cut. Opaque streams get none: nothing can ask them to wind down.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(5);

/// tokio's timer cannot sleep past about 2.2 years (and fires early beyond); a connection older
/// than this is retired and reopened anyway, which costs one handshake.
const LONGEST_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// When a connection's peer identity expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerExpiry {
    /// The chain's earliest notAfter, in Unix seconds (for logs).
    pub not_after: i64,
    /// The same instant on the runtime's clock, for timers.
    pub at: Instant,
}

impl PeerExpiry {
    /// The expiry of the chain the peer presented in this handshake; `None` without a chain or
    /// if the leaf does not parse (the caller refuses such a connection).
    pub fn of(tls: &rustls::CommonState) -> Option<PeerExpiry> {
        Self::of_chain(tls.peer_certificates()?)
    }

    /// The leaf's notAfter, or an intermediate's if that comes first: the identity is only as
    /// good as the chain that proves it.
    pub fn of_chain(chain: &[CertificateDer<'_>]) -> Option<PeerExpiry> {
        let (leaf, intermediates) = chain.split_first()?;
        let not_after = chain_not_after(leaf, intermediates)?;
        Some(PeerExpiry {
            not_after,
            at: instant_of(not_after, SystemTime::now(), Instant::now()),
        })
    }

    pub fn has_passed(&self) -> bool {
        Instant::now() >= self.at
    }
}

/// The earliest notAfter (Unix seconds) of a chain; `None` if the leaf does not parse.
pub(super) fn chain_not_after(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Option<i64> {
    let leaf = not_after_unix(leaf)?;
    Some(
        intermediates
            .iter()
            .filter_map(not_after_unix)
            .fold(leaf, i64::min),
    )
}

fn not_after_unix(cert: &CertificateDer<'_>) -> Option<i64> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// Maps a Unix time onto the monotonic clock, as seen at (`wall`, `now`).
fn instant_of(unix: i64, wall: SystemTime, now: Instant) -> Instant {
    let wait = UNIX_EPOCH
        .checked_add(Duration::from_secs(u64::try_from(unix).unwrap_or(0)))
        .map_or(LONGEST_WAIT, |target| {
            target.duration_since(wall).unwrap_or(Duration::ZERO)
        });
    now + wait.min(LONGEST_WAIT)
}

/// Counts and logs a connection retired because its peer's certificate expired.
pub fn record_retired(
    metrics: Option<&ProxyMetrics>,
    direction: Direction,
    identity: &str,
    expiry: &PeerExpiry,
) {
    if let Some(metrics) = metrics {
        (metrics.conns(direction).peer_expired_closes).fetch_add(1, Ordering::Relaxed);
    }
    tracing::info!(
        direction = direction.as_str(),
        peer = identity,
        not_after = expiry.not_after,
        "peer certificate expired; its connection takes no new request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, Issuer, KeyPair, SanType};

    fn cert(
        params: CertificateParams,
        key: &KeyPair,
        issuer: Option<&Issuer<'_, &KeyPair>>,
    ) -> CertificateDer<'static> {
        let cert = match issuer {
            Some(issuer) => params.signed_by(key, issuer),
            None => params.self_signed(key),
        };
        CertificateDer::from(cert.expect("certificate").der().to_vec())
    }

    fn valid_until(unix: i64) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(unix).expect("time");
        params
    }

    #[test]
    fn the_earliest_not_after_of_the_chain_wins() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = valid_until(now + 100);
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = cert(ca_params.clone(), &ca_key, None);
        let issuer = Issuer::new(ca_params, &ca_key);
        let key = KeyPair::generate().expect("key");
        let mut leaf_params = valid_until(now + 1000);
        leaf_params.subject_alt_names = vec![SanType::URI(
            "spiffe://t/ns/a/sa/b".try_into().expect("uri"),
        )];
        let leaf = cert(leaf_params, &key, Some(&issuer));

        let alone = PeerExpiry::of_chain(std::slice::from_ref(&leaf)).expect("parses");
        assert_eq!(alone.not_after, now + 1000);
        let chained = PeerExpiry::of_chain(&[leaf.clone(), ca]).expect("parses");
        assert_eq!(
            chained.not_after,
            now + 100,
            "the intermediate expires first"
        );
        let wait = chained.at.saturating_duration_since(Instant::now());
        assert!(
            wait > Duration::from_secs(98) && wait <= Duration::from_secs(100),
            "{wait:?}"
        );
        assert!(!chained.has_passed());

        assert_eq!(PeerExpiry::of_chain(&[]), None);
        let junk = CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]);
        assert_eq!(PeerExpiry::of_chain(&[junk]), None, "an unreadable leaf");
    }

    #[test]
    fn past_and_far_future_times_map_onto_the_clock() {
        let (wall, now) = (SystemTime::now(), Instant::now());
        let unix = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        assert_eq!(instant_of(unix - 10, wall, now), now, "already past: now");
        assert_eq!(instant_of(-5, wall, now), now);
        assert_eq!(instant_of(i64::MAX, wall, now), now + LONGEST_WAIT);
        let soon = instant_of(unix + 3, wall, now);
        assert!(soon > now + Duration::from_secs(2) && soon <= now + Duration::from_secs(3));
    }
}
