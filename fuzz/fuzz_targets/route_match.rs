//! Route matching (`proxy/src/config/routes.rs`, `proxy/src/http/route.rs`): a route table built
//! from fuzz input through the real decoder and snapshot builder, and arbitrary requests resolved
//! against it. Besides not panicking:
//! - the rule chosen is the first whose match holds, or the fallback when none does;
//! - the cluster chosen is one of that rule's backends (or the fallback's);
//! - a weighted split is exact: over one turn of the total weight, each backend gets its weight.
#![no_main]

use libfuzzer_sys::{arbitrary, fuzz_target};
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;
use trellis_api::discovery::Resource;
use trellis_api::type_url;
use trellis_fuzz as gen;
use trellis_proxy::config::{
    build_snapshot, decode, new_store, MeshSnapshot, ResourceCache, RouteRule,
};
use trellis_proxy::http::{route::resolve, Body};
use trellis_proxy::tls::TlsContext;
use trellis_proxy::transport::MeshConnector;

#[derive(arbitrary::Arbitrary, Debug)]
struct Input {
    routes: gen::RouteConfig,
    requests: Vec<gen::Request>,
}

fn check_split(rule: &RouteRule) {
    let total: u64 = rule.backends.iter().map(|b| u64::from(b.weight)).sum();
    if rule.backends.len() < 2 || total == 0 || total > 2000 {
        return;
    }
    let mut got: BTreeMap<&str, u64> = BTreeMap::new();
    for _ in 0..total {
        let chosen = rule.backend().expect("a rule with backends chooses one");
        *got.entry(chosen).or_default() += 1;
    }
    let mut want: BTreeMap<&str, u64> = BTreeMap::new();
    for b in &rule.backends {
        if b.weight > 0 {
            *want.entry(b.cluster.as_str()).or_default() += u64::from(b.weight);
        }
    }
    assert_eq!(got, want, "split over one turn of {total}");
}

fuzz_target!(|input: Input| {
    let resource = Resource {
        name: "default/web".into(),
        version: "1".into(),
        payload: input.routes.to_pb().encode_to_vec(),
    };
    let Ok(decoded) = decode(type_url::ROUTES, &resource) else {
        return;
    };
    let mut cache: ResourceCache = BTreeMap::new();
    cache
        .entry(type_url::ROUTES.to_string())
        .or_default()
        .insert(resource.name.clone(), ("1".into(), decoded));
    // Every cluster a route may name exists (without endpoints), so that resolving succeeds
    // whenever a route matches.
    for cluster in gen::CLUSTERS {
        let eps = trellis_api::config::Endpoints::default();
        let res = Resource {
            name: cluster.to_string(),
            version: "1".into(),
            payload: eps.encode_to_vec(),
        };
        let decoded = decode(type_url::ENDPOINTS, &res).expect("no endpoints decode");
        (cache.entry(type_url::ENDPOINTS.to_string()).or_default())
            .insert(cluster.to_string(), ("1".into(), decoded));
    }
    let connector = MeshConnector::new(TlsContext::default());
    let snapshot = build_snapshot(&cache, &MeshSnapshot::default(), &connector);
    let table = snapshot
        .routes
        .get("default/web")
        .expect("the table is built")
        .clone();
    let store = new_store();
    store.store(Arc::new(snapshot));

    for request in &input.requests {
        let head = request.to_http();
        let selected = table.select(&head);
        let first = table.rules.iter().find(|r| r.matcher.matches(&head));
        match first {
            Some(r) => assert!(Arc::ptr_eq(r, selected)),
            None => assert!(Arc::ptr_eq(&table.fallback, selected)),
        }
        check_split(selected);

        let (parts, ()) = head.into_parts();
        let req = http::Request::from_parts(parts, Body::empty());
        if let Ok(target) = resolve(&store, &req) {
            let rule_clusters = target.rule.backends.iter().map(|b| &b.cluster);
            let fallback = table.fallback.backends.iter().map(|b| &b.cluster);
            assert!(
                rule_clusters
                    .chain(fallback)
                    .any(|c| *c == target.cluster.name),
                "{} is not a backend of {}",
                target.cluster.name,
                target.rule.name
            );
        }
    }
});
