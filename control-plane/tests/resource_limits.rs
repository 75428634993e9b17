//! The control plane's resource limits, against real sockets on loopback: discovery stream caps
//! (per identity and in total, refused with RESOURCE_EXHAUSTED and a retry pushback, released
//! when a stream ends), HTTP/2 keepalive ending the streams of a proxy that vanished, and the
//! `serve` binary under a 128-descriptor limit flooded with connections: no accept spin, config
//! reloads still reach an open stream, and new clients get in once the flood is gone.
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tonic::Code;
use trellis_control_plane::discovery::PUSHBACK_KEY;
use trellis_control_plane::{ControlPlane, ControlPlaneConfig};

const MESH: &str = "\
services:
  - name: hello
    ports:
      - port: 80
    endpoints:
      - address: 127.0.0.1:4143
  - name: echo
    ports:
      - port: 80
  - name: other
    ports:
      - port: 80
";

/// An in-process control plane with `adjust` applied to its config; stopped on drop.
struct Plane {
    addr: SocketAddr,
    ca_pem: String,
    tokens: Vec<(String, String)>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Plane {
    async fn start(adjust: impl FnOnce(&mut ControlPlaneConfig)) -> Plane {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("mesh.yaml");
        write_config(&config_path, MESH);
        let mut cfg = ControlPlaneConfig::new(&config_path, dir.path().join("state"));
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        adjust(&mut cfg);
        let plane = ControlPlane::bind(cfg).await.unwrap();
        let tokens = ["hello", "echo", "other"]
            .map(|sa| (sa.to_owned(), plane.issue_token("default", sa)))
            .to_vec();
        let (addr, ca_pem) = (plane.local_addr(), plane.ca_pem());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = plane
                .run(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Plane {
            addr,
            ca_pem,
            tokens,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    fn token(&self, sa: &str) -> &str {
        &self.tokens.iter().find(|(s, _)| s == sa).unwrap().1
    }

    async fn stream(&self, sa: &str, node: &str) -> Result<Stream, tonic::Status> {
        let channel = connect(self.addr, &self.ca_pem).await.unwrap();
        let mut stream = open_stream(channel, self.token(sa), node, sa).await?;
        // The first response proves the stream is served (and counted).
        stream.next(Duration::from_secs(2)).await;
        Ok(stream)
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

fn pushback_ms(status: &tonic::Status) -> u64 {
    status
        .metadata()
        .get(PUSHBACK_KEY)
        .unwrap_or_else(|| panic!("{PUSHBACK_KEY} missing: {status:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn stream_caps_refuse_with_pushback_and_free_places_when_streams_end() {
    let plane = Plane::start(|cfg| {
        cfg.max_streams_per_identity = 3;
        cfg.max_streams = 5;
        cfg.stream_pushback = Duration::from_millis(1000);
    })
    .await;

    // Three streams of one identity, then the fourth is refused with the pushback hint.
    let mut hello = Vec::new();
    for i in 0..3 {
        hello.push(plane.stream("hello", &format!("hello-{i}")).await.unwrap());
    }
    let refused = plane.stream("hello", "hello-3").await.err().unwrap();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains(
            "identity spiffe://trellis.local/ns/default/sa/hello: 3 streams open \
             (max-streams-per-identity 3)"
        ),
        "{}",
        refused.message()
    );
    let ms = pushback_ms(&refused);
    assert!((1000..=1500).contains(&ms), "pushback {ms} ms");

    // Another identity still gets in, up to the total.
    let _echo: Vec<Stream> = vec![
        plane.stream("echo", "echo-0").await.unwrap(),
        plane.stream("echo", "echo-1").await.unwrap(),
    ];
    let refused = plane.stream("other", "other-0").await.err().unwrap();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains("5 streams open in total (max-streams 5)")
            && refused.message().contains("sa/other"),
        "{}",
        refused.message()
    );
    assert!((1000..=1500).contains(&pushback_ms(&refused)));

    // Closing one hello stream frees its place (the server sees the stream end).
    drop(hello.pop());
    let start = Instant::now();
    let mut attempts = 0;
    let reopened = loop {
        attempts += 1;
        match plane.stream("hello", "hello-again").await {
            Ok(stream) => break stream,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                assert!(start.elapsed() < Duration::from_secs(3), "never freed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    eprintln!(
        "place freed after {:?} ({attempts} attempts)",
        start.elapsed()
    );
    drop(reopened);
}

/// A TCP relay that can freeze: both directions stop and the sockets stay open, as when the
/// machine of a proxy loses power or the network partitions.
async fn freezable_relay(target: SocketAddr, frozen: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let frozen = frozen.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let pump = |mut from: tokio::net::tcp::OwnedReadHalf,
                            mut to: tokio::net::tcp::OwnedWriteHalf,
                            frozen: Arc<AtomicBool>| async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => return (from, to),
                            Ok(n) => n,
                        };
                        if frozen.load(Ordering::SeqCst) {
                            // Swallow everything from now on, keeping both sockets open.
                            loop {
                                if matches!(from.read(&mut buf).await, Ok(0) | Err(_)) {
                                    std::future::pending::<()>().await;
                                }
                            }
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            return (from, to);
                        }
                    }
                };
                let up = tokio::spawn(pump(cr, sw, frozen.clone()));
                let down = tokio::spawn(pump(sr, cw, frozen));
                let _ = tokio::join!(up, down);
            });
        }
    });
    addr
}

#[tokio::test]
async fn keepalive_ends_the_streams_of_a_vanished_proxy() {
    let plane = Plane::start(|cfg| {
        cfg.max_streams_per_identity = 1;
        cfg.keepalive_interval = Duration::from_millis(500);
        cfg.keepalive_timeout = Duration::from_millis(500);
    })
    .await;
    let frozen = Arc::new(AtomicBool::new(false));
    let relay = freezable_relay(plane.addr, frozen.clone()).await;
    let channel = connect(relay, &plane.ca_pem).await.unwrap();
    let mut vanishing = open_stream(channel, plane.token("hello"), "hello-0", "hello")
        .await
        .unwrap();
    vanishing.next(Duration::from_secs(2)).await;

    // Alive: the one place of this identity is taken, and keepalive does not end a healthy
    // connection (PINGs are answered through the relay).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = plane.stream("hello", "hello-1").await.err().unwrap();
    assert_eq!(refused.code(), Code::ResourceExhausted);

    // The proxy vanishes without closing anything: the server's PING goes unanswered, it closes
    // the connection, and the stream's place is free again.
    frozen.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let mut refusals = 0;
    let _replacement = loop {
        match plane.stream("hello", "hello-1").await {
            Ok(stream) => break stream,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                refusals += 1;
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "the vanished stream was never ended"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let took = start.elapsed();
    eprintln!("vanished stream ended after {took:?} ({refusals} refusals meanwhile)");
    assert!(refusals > 0, "the place was held until keepalive ran out");
    assert!(took >= Duration::from_millis(400), "{took:?}");
    drop(vanishing);
}

/// `serve` with its open-files limit set to `limit` (soft and hard, so it cannot raise it).
fn serve_limited(dir: &std::path::Path, limit: u64, extra: &[&str]) -> Served {
    use std::os::unix::process::CommandExt;
    let config = dir.join("mesh.yaml");
    write_config(&config, MESH);
    let mut command = serve_command(&config, &dir.join("state"), extra);
    // SAFETY: setrlimit is async-signal-safe, and nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    start_serve(command)
}

/// CPU time (user + system) the process has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Share of one core the process used over `window`.
async fn cpu_share(pid: u32, window: Duration) -> f64 {
    let before = cpu_time(pid);
    tokio::time::sleep(window).await;
    (cpu_time(pid) - before).as_secs_f64() / window.as_secs_f64()
}

/// Opens `n` TCP connections; returns them and how many connects failed.
async fn flood(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, usize) {
    let (mut open, mut failed) = (Vec::new(), 0);
    for _ in 0..n {
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => open.push(stream),
            _ => failed += 1,
        }
    }
    (open, failed)
}

/// How many of `streams` the server has closed (EOF or reset); the rest are still open.
fn closed_by_server(streams: &[TcpStream]) -> usize {
    let mut buf = [0u8; 1];
    streams
        .iter()
        .filter(|s| match s.try_read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        })
        .count()
}

/// Retries opening a discovery stream until one is served; returns how long that took.
async fn reconnect(served: &Served, token: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(channel) = connect(served.addr, &served.ca_pem).await {
            if let Ok(mut stream) = open_stream(channel, token, "hello-new", "hello").await {
                let first = stream.next(Duration::from_secs(2)).await;
                assert!(!addresses(&first).is_empty());
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < within,
            "no new client got in within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const FLOOD: usize = 400;
const FD_LIMIT: u64 = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_under_a_low_descriptor_limit_keeps_reloads_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let token = token(&dir.path().join("state"), "hello");
    let served = serve_limited(dir.path(), FD_LIMIT, &[]);
    let pid = served.child.pid();
    let config = dir.path().join("mesh.yaml");

    // A proxy connected before the flood.
    let channel = connect(served.addr, &served.ca_pem).await.unwrap();
    let mut stream = open_stream(channel, &token, "hello-0", "hello")
        .await
        .unwrap();
    let first = stream.next(Duration::from_secs(2)).await;
    assert_eq!(addresses(&first), ["127.0.0.1:4143"]);
    stream.ack(&first.nonce).await;

    // More connections than descriptors. The connection cap (128 - 64 reserved) admits 64,
    // the pre-flood proxy's among them; the rest are accepted and closed at once.
    let (flood, failed) = flood(served.addr, FLOOD).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let closed = closed_by_server(&flood);
    let held = flood.len() - closed;
    eprintln!(
        "flood: {FLOOD} attempted, {failed} connects failed, {closed} closed by the server, \
         {held} held"
    );
    assert_eq!(failed, 0, "the backlog takes every connect");
    assert_eq!(held, 63, "64 admitted, one of them the pre-flood proxy");
    assert_eq!(closed, FLOOD - 63);
    // A new client now is over the cap.
    assert!(connect(served.addr, &served.ca_pem).await.is_err());

    // (a) No accept spin while the cap holds.
    let share = cpu_share(pid, Duration::from_secs(3)).await;
    eprintln!("CPU while flooded: {:.1} % of a core", share * 100.0);
    assert!(share < 0.3, "CPU {:.1} %", share * 100.0);

    // (b) The reloader still has descriptors: a change reaches the pre-flood proxy.
    let written = Instant::now();
    write_config(
        &config,
        &MESH.replace(
            "      - address: 127.0.0.1:4143\n",
            "      - address: 127.0.0.1:4143\n      - address: 127.0.0.2:4143\n",
        ),
    );
    let update = stream.next(Duration::from_secs(5)).await;
    assert_eq!(addresses(&update), ["127.0.0.1:4143", "127.0.0.2:4143"]);
    assert_eq!(update.system_version_info, "2");
    eprintln!("reload applied while flooded after {:?}", written.elapsed());

    // (c) The flood goes away: new clients get in.
    drop(flood);
    let took = reconnect(&served, &token, Duration::from_secs(5)).await;
    eprintln!("a new client got in {took:?} after the flood closed");
    let logs = served.output.lock().unwrap().clone();
    assert!(
        logs.contains("connection limit reached; closing new connections"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_backs_off_instead_of_spinning_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let token = token(&dir.path().join("state"), "hello");
    // No connection cap to speak of: the flood really takes every descriptor.
    let served = serve_limited(dir.path(), FD_LIMIT, &["--max-connections", "100000"]);
    let pid = served.child.pid();
    let config = dir.path().join("mesh.yaml");
    let channel = connect(served.addr, &served.ca_pem).await.unwrap();
    let mut stream = open_stream(channel, &token, "hello-0", "hello")
        .await
        .unwrap();
    let first = stream.next(Duration::from_secs(2)).await;
    stream.ack(&first.nonce).await;

    let (flood, failed) = flood(served.addr, FLOOD).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let closed = closed_by_server(&flood);
    eprintln!("flood: {FLOOD} attempted, {failed} failed, {closed} closed by the server");
    assert_eq!(failed, 0);
    assert_eq!(
        closed, 0,
        "nothing is closed: accept cannot get a descriptor"
    );

    // (a) Accept fails with EMFILE; backing off keeps the CPU low.
    let share = cpu_share(pid, Duration::from_secs(3)).await;
    eprintln!("CPU out of descriptors: {:.1} % of a core", share * 100.0);
    assert!(share < 0.3, "CPU {:.1} %", share * 100.0);
    // Every failed accept is counted in the log lines (logged or held back until the next
    // line): backing off from 5 ms doubling to 1 s makes about a dozen in these seconds; retrying
    // at once would make thousands.
    let logs = served.output.lock().unwrap().clone();
    assert!(logs.contains("accept failed (out of resources)"), "{logs}");
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("accept failed"))
        .collect();
    let failed_accepts: u64 = lines
        .iter()
        .map(|l| {
            let held = l
                .split("errors_since_last_log=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no count in {l}"));
            held + 1
        })
        .sum();
    eprintln!(
        "accept failures while out of descriptors: {failed_accepts} in {} log lines",
        lines.len()
    );
    assert!(
        lines.len() <= 5,
        "logged at most once a second: {}",
        lines.len()
    );
    assert!(failed_accepts >= 3, "it did run out: {failed_accepts}");
    assert!(
        failed_accepts < 40,
        "backed off: {failed_accepts} failed accepts"
    );

    // A change written now cannot be read; it applies once descriptors are back.
    write_config(&config, &MESH.replace("127.0.0.1:4143", "127.0.0.3:4143"));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    drop(flood);
    let update = stream.next(Duration::from_secs(5)).await;
    assert_eq!(addresses(&update), ["127.0.0.3:4143"]);
    let took = reconnect(&served, &token, Duration::from_secs(5)).await;
    eprintln!("a new client got in {took:?} after the flood closed");
}

/// Proxies sharing one HTTP/2 connection (a multiplexing load balancer in front of the control
/// plane, the fleet bench) open more streams at once than the first-sync gate admits (64), each
/// resuming with large opening requests (`initial_resource_versions`). The requests of the
/// streams that wait for a place are read meanwhile; unread, they filled the connection's
/// flow-control window, the ACKs of the streams holding a place could not get through, and each
/// place was freed only by its 10 s hold (the bench's storm crawled at 6–8 streams a second).
#[tokio::test]
async fn streams_waiting_for_a_first_sync_place_do_not_stall_a_shared_connection() {
    use trellis_api::discovery::aggregated_discovery_client::AggregatedDiscoveryClient;
    use trellis_api::discovery::{DeltaDiscoveryRequest, Node};
    const STREAMS: usize = 100;
    let plane = Plane::start(|c| c.max_streams_per_identity = 1000).await;
    let channel = connect(plane.addr, &plane.ca_pem).await.unwrap();
    // 500 held names per type: about 15 KB per opening request, 75 KB per stream; the 36
    // streams beyond the gate hold 2.7 MB of requests, more than the connection's window.
    // (With 2,000 names the CPU of a debug build alone took 9 s on 2 cores, near the bound;
    // with 500, 2.3 s, and 11.1 s with the read-ahead taken out.)
    let held: std::collections::HashMap<String, String> = (0..500)
        .map(|i| (format!("default/held-service-{i:05}"), format!("{i:016x}")))
        .collect();
    let started = Instant::now();
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut opening = vec![DeltaDiscoveryRequest {
            node: Some(Node {
                id: format!("shared-{i}"),
                service: "hello".into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            type_url: trellis_api::type_url::TRUST_BUNDLE.into(),
            resource_names_subscribe: vec!["default".into()],
            ..Default::default()
        }];
        for t in &trellis_api::type_url::ALL[1..] {
            opening.push(DeltaDiscoveryRequest {
                type_url: (*t).into(),
                resource_names_subscribe: vec![trellis_api::WILDCARD.into()],
                initial_resource_versions: held.clone(),
                ..Default::default()
            });
        }
        for request in opening {
            tx.send(request).await.unwrap();
        }
        let mut client = AggregatedDiscoveryClient::new(channel.clone());
        let token = plane.token("hello").to_owned();
        streams.push(tokio::spawn(async move {
            let request = authorized(tokio_stream::wrappers::ReceiverStream::new(rx), &token);
            let mut responses = client.delta_resources(request).await?.into_inner();
            // A proxy: every response ACKed; done once each type was answered.
            let mut answered = std::collections::HashSet::new();
            while answered.len() < trellis_api::type_url::ALL.len() {
                let Some(response) = responses.message().await? else {
                    return Err(tonic::Status::aborted("stream ended"));
                };
                let ack = DeltaDiscoveryRequest {
                    type_url: response.type_url.clone(),
                    response_nonce: response.nonce.clone(),
                    ..Default::default()
                };
                let _ = tx.send(ack).await;
                answered.insert(response.type_url);
            }
            Ok::<_, tonic::Status>((started.elapsed(), tx, responses))
        }));
    }
    let mut slowest = Duration::ZERO;
    for (i, stream) in streams.into_iter().enumerate() {
        let synced = tokio::time::timeout(Duration::from_secs(30), stream)
            .await
            .unwrap_or_else(|_| panic!("stream {i} not in sync after 30 s"))
            .unwrap();
        let (took, _tx, _responses) = synced.unwrap_or_else(|e| panic!("stream {i}: {e}"));
        slowest = slowest.max(took);
    }
    // Without reading the waiting streams, the 36 beyond the gate wait for 10 s holds.
    assert!(
        slowest < Duration::from_secs(8),
        "the last of {STREAMS} streams on one connection was in sync after {slowest:?}"
    );
}
