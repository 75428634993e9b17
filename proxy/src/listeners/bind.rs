//! Listening sockets. One role (inbound, outbound, admin) may listen on several addresses
//! (`--inbound 0.0.0.0:4143,[::]:4143`): a dual-stack pod has an IPv4 and an IPv6 loopback, and
//! ip6tables' `REDIRECT` of locally made connections lands on `[::1]`, never on `127.0.0.1`.
//!
//! Binding follows what a platform engineer expects from Linkerd or Envoy: `[::]` alone is one
//! dual-stack socket (IPv4 peers appear as IPv4-mapped addresses, which `Listener::accept` turns
//! back into IPv4 so policy, logs and the original-destination lookup see the real family);
//! `[::]` beside an IPv4 address on the same port is IPv6-only, so both can bind. An IPv6 address
//! that cannot be bound because the pod has no IPv6 (disabled by sysctl, no `::1`) is skipped with
//! a warning when another address of the role did bind: the injector asks for both families and
//! must work on IPv4-only clusters.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// The addresses of one role, as given on the command line: comma-separated socket addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddrs(pub Vec<SocketAddr>);

impl From<SocketAddr> for ListenAddrs {
    fn from(addr: SocketAddr) -> Self {
        ListenAddrs(vec![addr])
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenAddrsError {
    #[error("no address given (expected e.g. 0.0.0.0:4143 or 0.0.0.0:4143,[::]:4143)")]
    Empty,
    #[error("{0:?} is not a socket address (IPv6 in brackets: [::]:4143)")]
    NotAnAddress(String),
    #[error("{0} is given twice")]
    Duplicate(SocketAddr),
}

impl FromStr for ListenAddrs {
    type Err = ListenAddrsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut addrs = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let addr: SocketAddr = item
                .parse()
                .map_err(|_| ListenAddrsError::NotAnAddress(item.to_string()))?;
            if addrs.contains(&addr) {
                return Err(ListenAddrsError::Duplicate(addr));
            }
            addrs.push(addr);
        }
        if addrs.is_empty() {
            return Err(ListenAddrsError::Empty);
        }
        Ok(ListenAddrs(addrs))
    }
}

impl fmt::Display for ListenAddrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, addr) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{addr}")?;
        }
        Ok(())
    }
}

/// The sockets of one role, accepted from as one.
#[derive(Debug)]
pub struct Listener {
    sockets: Vec<TcpListener>,
    /// Which socket `accept` polls first, rotated so that a busy family cannot starve the other.
    next: AtomicUsize,
}

/// Pending connections per socket, as tokio's own `TcpListener::bind`.
const BACKLOG: i32 = 1024;

impl Listener {
    pub async fn bind(addrs: &ListenAddrs) -> io::Result<Listener> {
        let mut sockets = Vec::new();
        let mut skipped = None;
        for &addr in &addrs.0 {
            let only_v6 = addr.is_ipv6()
                && addrs.0.iter().any(|other| {
                    other.is_ipv4() && other.port() == addr.port() && addr.ip().is_unspecified()
                });
            match bind_one(addr, only_v6) {
                Ok(socket) => sockets.push(socket),
                Err(e) if addr.is_ipv6() && no_ipv6_here(&e) => skipped = Some((addr, e)),
                Err(e) => return Err(io::Error::new(e.kind(), format!("{addr}: {e}"))),
            }
        }
        match (sockets.is_empty(), skipped) {
            (true, Some((addr, e))) => Err(io::Error::new(e.kind(), format!("{addr}: {e}"))),
            (false, Some((addr, e))) => {
                tracing::warn!(%addr, error = %e, "IPv6 is not available in this network namespace; not listening on it");
                Ok(Listener::from_sockets(sockets))
            }
            _ => Ok(Listener::from_sockets(sockets)),
        }
    }

    fn from_sockets(sockets: Vec<TcpListener>) -> Listener {
        Listener {
            sockets,
            next: AtomicUsize::new(0),
        }
    }

    /// The first bound address (the one tests and logs name).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self.sockets.first() {
            Some(socket) => socket.local_addr(),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "no socket bound")),
        }
    }

    /// TCP keepalive (`keepalive`) on every socket; Linux passes it on to each connection
    /// accepted afterwards, so no accepted connection pays a system call for it.
    pub fn set_tcp_keepalive(&self, idle: Duration) -> io::Result<()> {
        for socket in &self.sockets {
            socket2::SockRef::from(socket).set_tcp_keepalive(&keepalive(idle))?;
        }
        Ok(())
    }

    /// Every bound address.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        (self.sockets.iter())
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// The next connection on any of the sockets, with the peer's address in its own family
    /// (an IPv4 peer of a dual-stack socket as IPv4).
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.sockets.len();
        std::future::poll_fn(|cx| {
            for i in 0..n {
                let socket = &self.sockets[(first + i) % n];
                if let Poll::Ready(result) = socket.poll_accept(cx) {
                    return Poll::Ready(result.map(|(stream, peer)| (stream, canonical(peer))));
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// Unanswered keepalive probes before the kernel gives a connection up.
const KEEPALIVE_PROBES: u32 = 3;

/// Probes after `idle` of silence, then `KEEPALIVE_PROBES` probes `idle` apart: a peer gone
/// without a word is found within four times `idle` (`Limits::tcp_keepalive`).
pub fn keepalive(idle: Duration) -> socket2::TcpKeepalive {
    (socket2::TcpKeepalive::new())
        .with_time(idle)
        .with_interval(idle)
        .with_retries(KEEPALIVE_PROBES)
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) as the IPv4 address it is; others unchanged.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn bind_one(addr: SocketAddr, only_v6: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // Explicit, whatever `net.ipv6.bindv6only` says: `[::]` alone serves both families.
        socket.set_only_v6(only_v6 || !addr.ip().is_unspecified())?;
    }
    // As std does: a restarted proxy rebinds while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Binding an IPv6 address failed because the namespace has no IPv6 (disabled, or no such
/// address), not because of a conflict or a permission.
fn no_ipv6_here(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn addrs(s: &str) -> ListenAddrs {
        s.parse().unwrap()
    }

    fn ipv6_loopback_works() -> bool {
        std::net::TcpListener::bind("[::1]:0").is_ok()
    }

    #[tokio::test]
    async fn accepted_connections_inherit_the_listeners_tcp_keepalive() {
        let listener = Listener::bind(&addrs("127.0.0.1:0")).await.unwrap();
        listener.set_tcp_keepalive(Duration::from_secs(7)).unwrap();
        let addr = listener.local_addr().unwrap();
        let (_client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (accepted, _) = accepted.unwrap();
        // What the kernel reports for the accepted socket itself.
        let socket = socket2::SockRef::from(&accepted);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(7)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        // Without it, the kernel's default: off.
        let plain = Listener::bind(&addrs("127.0.0.1:0")).await.unwrap();
        let addr = plain.local_addr().unwrap();
        let (_client, accepted) = tokio::join!(TcpStream::connect(addr), plain.accept());
        let (accepted, _) = accepted.unwrap();
        assert!(!socket2::SockRef::from(&accepted).keepalive().unwrap());
    }

    #[test]
    fn lists_parse_and_bad_items_are_named() {
        assert_eq!(
            addrs("0.0.0.0:4143, [::]:4143").0,
            [
                "0.0.0.0:4143".parse().unwrap(),
                "[::]:4143".parse().unwrap()
            ] as [SocketAddr; 2]
        );
        assert_eq!(addrs("127.0.0.1:1").to_string(), "127.0.0.1:1");
        assert_eq!(
            addrs("127.0.0.1:1,[::1]:1").to_string(),
            "127.0.0.1:1,[::1]:1"
        );
        assert_eq!(
            "::1:4143".parse::<ListenAddrs>(),
            Err(ListenAddrsError::NotAnAddress("::1:4143".into()))
        );
        assert_eq!(" , ".parse::<ListenAddrs>(), Err(ListenAddrsError::Empty));
        let err = "127.0.0.1:1,127.0.0.1:1"
            .parse::<ListenAddrs>()
            .unwrap_err();
        assert!(
            err.to_string().contains("127.0.0.1:1 is given twice"),
            "{err}"
        );
    }

    async fn round_trip(listener: &Listener, to: SocketAddr) -> SocketAddr {
        let client = async {
            let mut c = TcpStream::connect(to).await.unwrap();
            c.write_all(b"hi").await.unwrap();
            c
        };
        let (_client, (mut accepted, peer)) =
            tokio::join!(client, async { listener.accept().await.unwrap() });
        let mut buf = [0u8; 2];
        accepted.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        peer
    }

    #[tokio::test]
    async fn one_unspecified_ipv6_socket_serves_ipv4_peers_as_ipv4() {
        if !ipv6_loopback_works() {
            eprintln!("SKIPPED: no IPv6 loopback here");
            return;
        }
        let listener = Listener::bind(&addrs("[::]:0")).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let peer = round_trip(&listener, SocketAddr::from(([127, 0, 0, 1], port))).await;
        assert!(peer.is_ipv4(), "{peer}");
        assert_eq!(peer.ip().to_string(), "127.0.0.1");
        let peer = round_trip(&listener, format!("[::1]:{port}").parse().unwrap()).await;
        assert_eq!(peer.ip().to_string(), "::1");
    }

    #[tokio::test]
    async fn both_families_on_one_port_bind_side_by_side_and_both_accept() {
        if !ipv6_loopback_works() {
            eprintln!("SKIPPED: no IPv6 loopback here");
            return;
        }
        // A free port for both families: bind IPv4 on 0, then ask for the same port on [::].
        let probe = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let listener = Listener::bind(&addrs(&format!("0.0.0.0:{port},[::]:{port}")))
            .await
            .unwrap();
        assert_eq!(listener.local_addrs().len(), 2);
        for _ in 0..3 {
            let v4 = round_trip(&listener, SocketAddr::from(([127, 0, 0, 1], port))).await;
            assert!(v4.is_ipv4());
            let v6 = round_trip(&listener, format!("[::1]:{port}").parse().unwrap()).await;
            assert!(v6.is_ipv6());
        }
    }

    #[tokio::test]
    async fn a_conflict_is_an_error_naming_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = Listener::bind(&ListenAddrs::from(addr)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn mapped_addresses_become_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:80".parse().unwrap();
        assert_eq!(
            canonical(mapped),
            "10.1.2.3:80".parse::<SocketAddr>().unwrap()
        );
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
