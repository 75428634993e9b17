//! Faults on purpose, for the fault-tolerance suites.
//!
//! `ChaosRelay` is a TCP relay placed where a sidecar expects its peer (list the relay's address
//! as the endpoint): it forwards bytes both ways and, at random points, resets the connection on
//! both sides (SO_LINGER 0, then close: an RST, not a FIN), the way a crashing peer, a conntrack
//! flush or a middlebox does. Every relayed chunk, in either direction, and the accept itself,
//! has the same chance of being the last, so a reset can land in the TLS handshake, between
//! requests or in the middle of a body, and long-lived pooled connections keep dying too. Each
//! connection draws from its own generator seeded with (seed, connection number), so a seed
//! replays the same decisions for the same sequence of chunks.
//!
//! `DyingApp` (in `app`) is an upstream app that can be killed with its connections mid-response.

pub mod app;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// SplitMix64: tiny, seedable, and good enough to pick when to reset.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `per_million` / 1e6.
    pub fn chance(&mut self, per_million: u64) -> bool {
        self.next_u64() % 1_000_000 < per_million
    }
}

/// What the relay did, for tests to check that chaos really happened.
#[derive(Debug, Default)]
pub struct ChaosStats {
    pub connections: AtomicU64,
    pub resets: AtomicU64,
    pub bytes: AtomicU64,
}

/// A running relay; stopped (listener and every connection) on drop.
pub struct ChaosRelay {
    pub addr: SocketAddr,
    pub stats: Arc<ChaosStats>,
    /// Reset chance per chunk, in millionths; 0 relays faithfully.
    reset_per_million: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for ChaosRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ChaosRelay {
    /// Relays 127.0.0.1:<any> to `target`, resetting with chance `reset_chance` per chunk.
    pub async fn start(
        target: SocketAddr,
        seed: u64,
        reset_chance: f64,
    ) -> std::io::Result<ChaosRelay> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(ChaosStats::default());
        let reset_per_million = Arc::new(AtomicU64::new(0));
        let relay = ChaosRelay {
            addr,
            stats: stats.clone(),
            reset_per_million: reset_per_million.clone(),
            task: tokio::spawn(accept_loop(
                listener,
                target,
                seed,
                stats,
                reset_per_million,
            )),
        };
        relay.set_reset_chance(reset_chance);
        Ok(relay)
    }

    /// Changes the chance for every connection, open or future; 0 ends the chaos.
    pub fn set_reset_chance(&self, chance: f64) {
        let per_million = (chance.clamp(0.0, 1.0) * 1e6).round() as u64;
        self.reset_per_million.store(per_million, Ordering::Relaxed);
    }

    pub fn resets(&self) -> u64 {
        self.stats.resets.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    seed: u64,
    stats: Arc<ChaosStats>,
    reset_per_million: Arc<AtomicU64>,
) {
    // Connection tasks live in the set so that aborting this task ends them too.
    let mut connections = tokio::task::JoinSet::new();
    let mut number = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                number += 1;
                stats.connections.fetch_add(1, Ordering::Relaxed);
                let rng = SplitMix64::new(seed ^ number.wrapping_mul(0xA076_1D64_78BD_642F));
                connections.spawn(relay(client, target, rng, stats.clone(), reset_per_million.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Relays one connection until either side closes or the dice say reset.
async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    mut rng: SplitMix64,
    stats: Arc<ChaosStats>,
    reset_per_million: Arc<AtomicU64>,
) {
    let doomed = |rng: &mut SplitMix64| rng.chance(reset_per_million.load(Ordering::Relaxed));
    if doomed(&mut rng) {
        reset(&client);
        stats.resets.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Ok(mut server) = TcpStream::connect(target).await else {
        reset(&client);
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        // Reads are cancel-safe; each side is full duplex, so writing inline cannot deadlock.
        let (read, from_client) = tokio::select! {
            n = client.read(&mut up) => (n, true),
            n = server.read(&mut down) => (n, false),
        };
        let n = match read {
            Ok(n) if n > 0 => n,
            // A FIN or an error on either side: close both (a FIN onward, like a proxy would).
            _ => return,
        };
        if doomed(&mut rng) {
            reset(&client);
            reset(&server);
            stats.resets.fetch_add(1, Ordering::Relaxed);
            return;
        }
        stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
        let written = if from_client {
            server.write_all(&up[..n]).await
        } else {
            client.write_all(&down[..n]).await
        };
        if written.is_err() {
            return;
        }
    }
}

/// Makes the coming close send an RST: SO_LINGER with a zero timeout.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_reproducible_and_chance_is_about_right() {
        let (mut a, mut b) = (SplitMix64::new(7), SplitMix64::new(7));
        let first: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let again: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(first, again);
        let mut rng = SplitMix64::new(42);
        let hits = (0..100_000).filter(|_| rng.chance(100_000)).count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
        assert_eq!((0..1000).filter(|_| rng.chance(0)).count(), 0);
    }
}
