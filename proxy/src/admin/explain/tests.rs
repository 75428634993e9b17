use super::*;
use crate::authz::{Action, Policy, Rule, Source, Target};
use crate::balance::tests_support::cluster;
use crate::config::{
    AppPort, AppProtocol, Backend, HeaderMatch, HeaderValueMatch, InboundPolicy, LbPolicy,
    MtlsMode, PathMatch,
};
use std::sync::Arc;

fn rule(name: &str, matcher: RouteMatch, cluster: &str) -> Arc<RouteRule> {
    Arc::new(RouteRule {
        backends: vec![Backend {
            cluster: cluster.into(),
            weight: 1,
        }],
        matcher,
        ..RouteRule::catch_all(name.into(), String::new(), Arc::default())
    })
}

fn snapshot() -> MeshSnapshot {
    let table = Arc::new(RouteTable {
        name: "default/hello".into(),
        hosts: vec!["hello".into()],
        ports: vec![80],
        rules: vec![
            rule(
                "api",
                RouteMatch {
                    path: PathMatch::Prefix("/api".into()),
                    ..Default::default()
                },
                "c",
            ),
            rule(
                "canary",
                RouteMatch {
                    headers: vec![HeaderMatch {
                        name: HeaderName::from_static("x-canary"),
                        value: HeaderValueMatch::Present(true),
                    }],
                    ..Default::default()
                },
                "c",
            ),
        ],
        fallback: rule("default", RouteMatch::default(), "c"),
    });
    let mut snapshot = MeshSnapshot::default();
    snapshot
        .routes_by_host
        .insert("hello".into(), table.clone());
    snapshot.routes.insert("default/hello".into(), table);
    snapshot
        .clusters
        .insert("c".into(), cluster(LbPolicy::RoundRobin, &[1, 1]));
    snapshot.inbound = Some(InboundPolicy {
        ports: vec![AppPort {
            port: 80,
            target_port: 8080,
            protocol: AppProtocol::Http1,
        }],
        mtls: MtlsMode::Strict,
        authorization: Policy {
            default: Action::Deny,
            rules: vec![Rule {
                name: "frontend-only".into(),
                action: Action::Allow,
                from: Source {
                    identities: vec![crate::authz::IdentityMatch::parse(
                        "spiffe://t/ns/a/sa/frontend",
                    )],
                    ..Default::default()
                },
                to: Target::default(),
            }],
        },
    });
    snapshot
}

fn explain_query(query: &str) -> Value {
    let q = Query::parse(query).unwrap_or_else(|e| panic!("{e}"));
    explain(&snapshot(), Some("spiffe://t/ns/a/sa/me"), &q)
}

#[test]
fn names_the_route_and_why_earlier_rules_did_not_match() {
    let doc = explain_query("authority=hello:80&path=%2Fhome&header=x-canary:%201");
    assert_eq!(doc["route"], "canary");
    assert_eq!(doc["routes"][0]["name"], "api");
    assert_eq!(
        doc["routes"][0]["why"],
        "path /home does not match prefix /api"
    );
    assert_eq!(doc["routes"][1]["why"], "matched");
    assert_eq!(doc["routes"].as_array().map(Vec::len), Some(2));
    assert_eq!(doc["request"]["headers"]["x-canary"], "1");

    let doc = explain_query("authority=hello:80&path=/home");
    assert_eq!(doc["route"], "default");
    let why = doc["routes"][1]["why"].as_str().unwrap_or_default();
    assert!(why.starts_with("header x-canary does not match"), "{why}");
}

#[test]
fn shows_policy_budget_and_endpoint_state() {
    let doc = explain_query("authority=hello:80&path=/api/x&method=POST");
    let backend = &doc["backends"][0];
    assert_eq!(backend["cluster"], "c");
    assert_eq!(backend["policy"]["timeout"], "15s");
    assert_eq!(backend["policy"]["timeoutFrom"], "cluster");
    assert_eq!(backend["policy"]["retriesApply"], false);
    assert_eq!(backend["policy"]["budget"]["retriesAllowed"], 100);
    assert_eq!(backend["policy"]["budget"]["exhausted"], false);
    assert_eq!(backend["policy"]["breaker"]["requests"], json!([0, 1024]));
    assert_eq!(backend["endpoints"][0]["address"], "127.0.0.1:1000");
    assert_eq!(backend["endpoints"][1]["ejected"], false);
    assert_eq!(doc["sidecar"], "spiffe://t/ns/a/sa/me");
}

#[test]
fn decides_inbound_authorization_for_the_given_caller() {
    let doc = explain_query("authority=hello&from=spiffe://t/ns/a/sa/frontend");
    assert_eq!(doc["authorization"]["action"], "allow");
    assert_eq!(doc["authorization"]["rule"], "frontend-only");
    let doc = explain_query("authority=hello&from=spiffe://t/ns/a/sa/other");
    assert_eq!(doc["authorization"]["action"], "deny");
    assert_eq!(doc["authorization"]["rule"], "default");
    assert!(explain_query("authority=hello")
        .get("authorization")
        .is_none());
}

#[test]
fn unknown_authority_and_bad_queries_say_what_to_fix() {
    let doc = explain_query("authority=nope:80");
    assert_eq!(doc["route"], Value::Null);
    let why = doc["noRoute"].as_str().unwrap_or_default();
    assert!(why.starts_with("no route config names nope:80"), "{why}");
    assert_eq!(
        Query::parse("path=/x").err(),
        Some(ExplainError::MissingAuthority)
    );
    let e = Query::parse("authority=a&header=novalue")
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("invalid header \"novalue\": write it as name:value")
    );
}

#[test]
fn recent_requests_are_those_on_the_explained_host_and_route() {
    use super::super::recent::{Outcome, RecentRequests};
    let recent = RecentRequests::default();
    let api = rule("api", RouteMatch::default(), "default/hello");
    let other = rule("api", RouteMatch::default(), "default/other");
    let at = |authority: &str, path: &str, route: Option<&Arc<RouteRule>>, direction| {
        let req = http::Request::get(path)
            .header("host", authority)
            .body(())
            .unwrap();
        let ticket = recent.start(direction, &req, route);
        let outcome = Outcome {
            status: 200,
            elapsed: std::time::Duration::from_millis(1),
            attempts: 1,
        };
        recent.finish(ticket, outcome);
    };
    at("hello:80", "/api/1", Some(&api), "outbound");
    at("other", "/api/2", Some(&other), "outbound");
    at("hello", "/api/3", Some(&api), "outbound");
    at("hello", "/in", None, "inbound");
    at("hello", "/none", None, "outbound");
    at("hello", "/api/4", Some(&api), "outbound");
    let paths = |doc: &Value| -> Vec<String> {
        (doc["recent"].as_array().into_iter().flatten())
            .map(|r| r["path"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let mut doc = json!({"route": "api", "request": {"authority": "hello"}});
    add_recent(&mut doc, &recent, 10);
    assert_eq!(paths(&doc), ["/api/1", "/api/3", "/in", "/api/4"]);
    add_recent(&mut doc, &recent, 2);
    assert_eq!(paths(&doc), ["/in", "/api/4"], "the newest n");
    let mut unrouted = json!({"route": null, "request": {"authority": "hello"}});
    add_recent(&mut unrouted, &recent, 10);
    assert_eq!(paths(&unrouted), ["/in"]);
    // The same host written another way: upper case, with a port.
    at("HELLO:8080", "/api/5", Some(&api), "outbound");
    add_recent(&mut doc, &recent, 1);
    assert_eq!(paths(&doc), ["/api/5"]);
}
