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
//! `freeze_open_connections` turns the relay into a black hole for the connections it carries
//! at that moment: they stop forwarding in both directions but stay open (no FIN, no RST), as a
//! partition or a load balancer that lost its backend leaves them, while new connections are
//! relayed normally (they reach a healthy replica).
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
    /// Connections that were open when a freeze came and went silent.
    pub frozen: AtomicU64,
    /// Of those, the ones their client gave up on (closed its end).
    pub frozen_closed: AtomicU64,
}

/// A running relay; stopped (listener and every connection) on drop.
pub struct ChaosRelay {
    pub addr: SocketAddr,
    targets: Arc<Vec<Target>>,
    pub stats: Arc<ChaosStats>,
    /// Reset chance per chunk, in millionths; 0 relays faithfully.
    reset_per_million: Arc<AtomicU64>,
    /// Bumped by each freeze; a connection accepted before the bump goes silent.
    freezes: tokio::sync::watch::Sender<u64>,
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
        ChaosRelay::balance(&[target], seed, reset_chance).await
    }

    /// Like `start`, in front of several targets, as a Kubernetes Service in front of replicas:
    /// each new connection goes to the next target in turn that accepts it (a stopped one refuses
    /// and is skipped).
    pub async fn balance(
        targets: &[SocketAddr],
        seed: u64,
        reset_chance: f64,
    ) -> std::io::Result<ChaosRelay> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(ChaosStats::default());
        let reset_per_million = Arc::new(AtomicU64::new(0));
        let (freezes, frozen) = tokio::sync::watch::channel(0);
        let targets: Arc<Vec<Target>> = Arc::new(
            (targets.iter())
                .map(|&addr| Target {
                    addr,
                    connections: AtomicU64::new(0),
                })
                .collect(),
        );
        let relay = ChaosRelay {
            addr,
            targets: targets.clone(),
            stats: stats.clone(),
            reset_per_million: reset_per_million.clone(),
            freezes,
            task: tokio::spawn(accept_loop(
                listener,
                Shared {
                    targets,
                    next: Arc::new(AtomicU64::new(0)),
                    seed,
                    stats,
                    reset_per_million,
                    freezes: frozen,
                },
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

    /// Every connection open now stops forwarding and stays open; later ones relay normally.
    pub fn freeze_open_connections(&self) {
        self.freezes.send_modify(|generation| *generation += 1);
    }

    pub fn frozen(&self) -> u64 {
        self.stats.frozen.load(Ordering::Relaxed)
    }

    /// Frozen connections whose client has since closed them.
    pub fn frozen_closed(&self) -> u64 {
        self.stats.frozen_closed.load(Ordering::Relaxed)
    }

    pub fn resets(&self) -> u64 {
        self.stats.resets.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// Connections relayed to target `index` (of `balance`) so far.
    pub fn connections_to(&self, index: usize) -> u64 {
        (self.targets.get(index)).map_or(0, |t| t.connections.load(Ordering::Relaxed))
    }
}

/// One upstream of a relay and how many connections went to it.
struct Target {
    addr: SocketAddr,
    connections: AtomicU64,
}

/// What every connection of one relay shares.
#[derive(Clone)]
struct Shared {
    targets: Arc<Vec<Target>>,
    /// The target the next connection tries first.
    next: Arc<AtomicU64>,
    seed: u64,
    stats: Arc<ChaosStats>,
    reset_per_million: Arc<AtomicU64>,
    freezes: tokio::sync::watch::Receiver<u64>,
}

async fn accept_loop(listener: TcpListener, shared: Shared) {
    // Connection tasks live in the set so that aborting this task ends them too.
    let mut connections = tokio::task::JoinSet::new();
    let mut number = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                number += 1;
                shared.stats.connections.fetch_add(1, Ordering::Relaxed);
                let rng = SplitMix64::new(shared.seed ^ number.wrapping_mul(0xA076_1D64_78BD_642F));
                connections.spawn(relay(client, rng, shared.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Relays one connection until either side closes or the dice say reset; after a freeze, holds
/// both sockets open without reading or writing until the relay is dropped.
async fn relay(mut client: TcpStream, mut rng: SplitMix64, mut shared: Shared) {
    let generation = *shared.freezes.borrow_and_update();
    let reset_per_million = shared.reset_per_million.clone();
    let stats = shared.stats.clone();
    let doomed = |rng: &mut SplitMix64| rng.chance(reset_per_million.load(Ordering::Relaxed));
    if doomed(&mut rng) {
        reset(&client);
        stats.resets.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Some(mut server) = connect_next(&shared).await else {
        reset(&client);
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        // Reads are cancel-safe; each side is full duplex, so writing inline cannot deadlock.
        let step = tokio::select! {
            n = client.read(&mut up) => Step::Read(n, true),
            n = server.read(&mut down) => Step::Read(n, false),
            changed = shared.freezes.wait_for(|g| *g > generation) => match changed {
                Ok(_) => Step::Freeze,
                Err(_) => return,
            },
        };
        let (read, from_client) = match step {
            Step::Read(read, from_client) => (read, from_client),
            Step::Freeze => {
                stats.frozen.fetch_add(1, Ordering::Relaxed);
                // Nothing passes either way and the server never hears from the client again.
                // What the client sends is swallowed, as a black hole's kernel would ACK it, so
                // that its close can be seen: the client gave up on the connection.
                let mut sink = vec![0u8; 16 * 1024];
                while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
                stats.frozen_closed.fetch_add(1, Ordering::Relaxed);
                // The server's socket stays open until the relay is dropped.
                return std::future::pending().await;
            }
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

/// A connection to the first target, in turn from the next one, that accepts it.
async fn connect_next(shared: &Shared) -> Option<TcpStream> {
    let n = shared.targets.len();
    let first = shared.next.fetch_add(1, Ordering::Relaxed) as usize;
    for i in 0..n {
        let target = &shared.targets[(first + i) % n];
        if let Ok(stream) = TcpStream::connect(target.addr).await {
            target.connections.fetch_add(1, Ordering::Relaxed);
            return Some(stream);
        }
    }
    None
}

/// What woke a relayed connection.
enum Step {
    /// Bytes (or EOF, or an error) from the client (`true`) or the server.
    Read(std::io::Result<usize>, bool),
    Freeze,
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
