//! Micro-benchmarks of the proxy's per-request work, through its public API only (the routing
//! module is being rewritten for traffic policy; each bench is a few lines to adapt): the config
//! snapshot load (one arc-swap load), route selection (authority → route table → first matching
//! prefix → cluster), hop-by-hop header stripping, and the balancer's endpoint pick.

#![forbid(unsafe_code)]

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Request};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use trellis_proxy::config::routes::{PathMatch, RouteMatch, RouteRule};
use trellis_proxy::config::{
    Cluster, ClusterPolicy, Endpoint, EndpointState, MeshSnapshot, RouteTable,
};
use trellis_proxy::transport::MeshConnection;

// --- Fixture: the only part that knows how the proxy's config types are built. ---

fn endpoint(i: u16, weight: u32) -> Arc<Endpoint> {
    let addr = SocketAddr::from(([127, 0, 0, 2], 4000 + i));
    Arc::new(Endpoint {
        addr,
        identity: "spiffe://trellis.local/ns/default/sa/svc".into(),
        weight,
        plaintext: false,
        state: Arc::new(EndpointState {
            conn: MeshConnection::plain(addr),
            load: Default::default(),
            outlier: Default::default(),
        }),
    })
}

fn cluster(name: &str, endpoints: Vec<Arc<Endpoint>>) -> Arc<Cluster> {
    Arc::new(Cluster {
        name: name.into(),
        policy: ClusterPolicy::default(),
        endpoints,
        state: Arc::default(),
        ring: None,
    })
}

fn prefix_rule(name: &str, prefix: &str, cluster: &str) -> Arc<RouteRule> {
    Arc::new(RouteRule {
        matcher: RouteMatch {
            path: PathMatch::Prefix(prefix.into()),
            ..Default::default()
        },
        ..RouteRule::catch_all(name.into(), cluster.into(), Arc::default())
    })
}

/// A snapshot with `services` services, each reachable by its four names, with 4 prefix routes
/// and 3 endpoints.
fn snapshot(services: usize) -> MeshSnapshot {
    let mut snap = MeshSnapshot::default();
    for i in 0..services {
        let name = format!("svc{i}");
        let hosts = vec![
            name.clone(),
            format!("{name}.default"),
            format!("{name}.default.svc"),
            format!("{name}.default.svc.cluster.local"),
        ];
        let table = Arc::new(RouteTable {
            name: name.clone(),
            hosts: hosts.clone(),
            ports: vec![80],
            rules: ["/api/v1", "/api/v2", "/static", "/admin"]
                .iter()
                .map(|p| prefix_rule(p, p, &name))
                .collect(),
            fallback: Arc::new(RouteRule::catch_all(
                "default".into(),
                name.clone(),
                Arc::default(),
            )),
        });
        for h in hosts {
            snap.routes_by_host.insert(h, table.clone());
        }
        snap.routes.insert(name.clone(), table);
        let eps = (0..3).map(|e| endpoint(e, 1)).collect();
        snap.clusters.insert(name.clone(), cluster(&name, eps));
    }
    snap
}

// --- The benches. ---

fn bench_snapshot_load(c: &mut Criterion) {
    let store = trellis_proxy::config::new_store();
    store.store(Arc::new(snapshot(100)));
    c.bench_function("config snapshot load (arc-swap)", |b| {
        b.iter(|| black_box(store.load().clusters.len()))
    });
}

fn bench_route(c: &mut Criterion) {
    let store = trellis_proxy::config::new_store();
    store.store(Arc::new(snapshot(100)));
    let req = Request::get("/api/v2/users").body(()).unwrap_or_default();
    c.bench_function("route selection (100 services, 4 prefix routes)", |b| {
        b.iter(|| {
            let snap = store.load();
            let table = snap.route_table(black_box("svc42.default.svc"), Some(80));
            let rule = table.map(|t| t.select(black_box(&req)));
            let cluster = rule.and_then(|r| r.backend()).unwrap_or_default();
            black_box(snap.clusters.get(cluster).map(Arc::clone))
        })
    });
}

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("connection", "keep-alive, x-private"),
        ("keep-alive", "timeout=5"),
        ("x-private", "1"),
        ("te", "trailers"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("content-type", "application/json"),
        ("x-request-id", "5f0c6b8e-3c57-4c4f-9a3c-0e2f6d1b7a11"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn bench_headers(c: &mut Criterion) {
    let template = request_headers();
    c.bench_function("strip_hop_by_hop (8 headers)", |b| {
        b.iter_batched_ref(
            || template.clone(),
            trellis_proxy::http::headers::strip_hop_by_hop,
            criterion::BatchSize::SmallInput,
        )
    });
}

fn bench_balance(c: &mut Criterion) {
    let eps: Vec<Arc<Endpoint>> = (0..10).map(|i| endpoint(i, u32::from(i % 3) + 1)).collect();
    let cluster = cluster("svc", eps);
    let headers = HeaderMap::new();
    c.bench_function(
        "balance::pick (10 weighted endpoints, default policy)",
        |b| {
            b.iter(|| {
                black_box(trellis_proxy::balance::pick(&cluster, &headers, None).map(|e| e.addr))
            })
        },
    );
}

criterion_group!(
    benches,
    bench_snapshot_load,
    bench_route,
    bench_headers,
    bench_balance
);
criterion_main!(benches);
