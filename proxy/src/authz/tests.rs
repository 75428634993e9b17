//! The decision rules, each with the caller it admits and the one it refuses, and the layer.

use super::*;
use crate::config::{new_store, AppPort, AppProtocol, InboundPolicy, MeshSnapshot, MtlsMode};
use crate::errors::ProxyError;
use std::sync::Arc;

const WEB: &str = "spiffe://td/ns/default/sa/web";
const ADMIN: &str = "spiffe://td/ns/ops/sa/admin";

fn rule(name: &str, action: Action, from: Source, to: Target) -> Rule {
    Rule {
        name: name.into(),
        action,
        from,
        to,
    }
}

fn ids(patterns: &[&str]) -> Source {
    Source {
        identities: patterns.iter().map(|p| IdentityMatch::parse(p)).collect(),
        ..Source::default()
    }
}

struct Req {
    method: Method,
    path: &'static str,
    headers: HeaderMap,
    port: u16,
}

fn get(path: &'static str) -> Req {
    Req {
        method: Method::GET,
        path,
        headers: HeaderMap::new(),
        port: 80,
    }
}

fn decide(policy: &Policy, peer: &Peer, req: &Req) -> Decision {
    policy.decide(
        peer,
        &Attributes {
            port: Some(req.port),
            http: Some(HttpAttributes {
                method: &req.method,
                path: req.path,
                headers: &req.headers,
            }),
        },
    )
}

fn tcp(policy: &Policy, peer: &Peer) -> Decision {
    policy.decide(
        peer,
        &Attributes {
            port: Some(80),
            http: None,
        },
    )
}

fn allowed(policy: &Policy, peer: &Peer, req: &Req) -> bool {
    decide(policy, peer, req).allowed()
}

fn deny_by_default(rules: Vec<Rule>) -> Policy {
    Policy {
        default: Action::Deny,
        rules,
    }
}

#[test]
fn default_allow_without_rules_admits_everyone() {
    let p = Policy::default();
    let d = decide(&p, &Peer::unauthenticated(), &get("/"));
    assert_eq!(d.action, Action::Allow);
    assert_eq!(d.rule, DEFAULT_RULE);
}

#[test]
fn default_deny_with_no_rule_refuses_everything() {
    let p = deny_by_default(vec![]);
    for peer in [Peer::authenticated(WEB), Peer::unauthenticated()] {
        let d = decide(&p, &peer, &get("/"));
        assert_eq!(d.action, Action::Deny);
        assert_eq!(d.rule, DEFAULT_RULE);
        assert!(!tcp(&p, &peer).allowed());
    }
}

#[test]
fn deny_wins_over_allow_whatever_the_order() {
    let p = deny_by_default(vec![
        rule("allow-web", Action::Allow, ids(&[WEB]), Target::default()),
        rule("deny-web", Action::Deny, ids(&[WEB]), Target::default()),
    ]);
    let d = decide(&p, &Peer::authenticated(WEB), &get("/"));
    assert_eq!(
        d,
        Decision {
            action: Action::Deny,
            rule: "deny-web".into()
        }
    );
}

#[test]
fn identity_exact_prefix_and_star() {
    let exact = deny_by_default(vec![rule(
        "r",
        Action::Allow,
        ids(&[WEB]),
        Target::default(),
    )]);
    assert!(allowed(&exact, &Peer::authenticated(WEB), &get("/")));
    assert!(!allowed(&exact, &Peer::authenticated(ADMIN), &get("/")));
    assert!(!allowed(
        &exact,
        &Peer::authenticated(format!("{WEB}x")),
        &get("/")
    ));

    let prefix = deny_by_default(vec![rule(
        "r",
        Action::Allow,
        ids(&["spiffe://td/ns/default/*"]),
        Target::default(),
    )]);
    assert!(allowed(&prefix, &Peer::authenticated(WEB), &get("/")));
    assert!(!allowed(&prefix, &Peer::authenticated(ADMIN), &get("/")));

    let star = deny_by_default(vec![rule(
        "r",
        Action::Allow,
        ids(&["*"]),
        Target::default(),
    )]);
    assert!(allowed(&star, &Peer::authenticated(ADMIN), &get("/")));
    assert!(
        !allowed(&star, &Peer::unauthenticated(), &get("/")),
        "* means any authenticated caller"
    );
}

#[test]
fn namespaces_come_from_the_spiffe_id() {
    let from = Source {
        namespaces: vec!["ops".into()],
        ..Source::default()
    };
    let p = deny_by_default(vec![rule("ops", Action::Allow, from, Target::default())]);
    assert!(allowed(&p, &Peer::authenticated(ADMIN), &get("/")));
    assert!(!allowed(&p, &Peer::authenticated(WEB), &get("/")));
    assert!(!allowed(&p, &Peer::unauthenticated(), &get("/")));
}

#[test]
fn unauthenticated_condition() {
    let only_plain = Source {
        unauthenticated: Some(true),
        ..Source::default()
    };
    let p = Policy {
        default: Action::Allow,
        rules: vec![rule(
            "no-plaintext",
            Action::Deny,
            only_plain,
            Target::default(),
        )],
    };
    assert!(!allowed(&p, &Peer::unauthenticated(), &get("/")));
    assert!(allowed(&p, &Peer::authenticated(WEB), &get("/")));

    let only_mtls = Source {
        unauthenticated: Some(false),
        ..Source::default()
    };
    let p = deny_by_default(vec![rule(
        "mtls",
        Action::Allow,
        only_mtls,
        Target::default(),
    )]);
    assert!(allowed(&p, &Peer::authenticated(WEB), &get("/")));
    assert!(!allowed(&p, &Peer::unauthenticated(), &get("/")));
}

#[test]
fn ports_paths_methods_and_headers() {
    let to = Target {
        ports: vec![80],
        paths: vec![
            PathRule::Exact("/health".into()),
            PathRule::Prefix("/api/".into()),
        ],
        methods: vec![Method::GET],
        headers: vec![HeaderRule {
            name: HeaderName::from_static("x-team"),
            value: HeaderRuleValue::Prefix("blue".into()),
        }],
    };
    let p = deny_by_default(vec![rule("r", Action::Allow, Source::default(), to)]);
    let peer = Peer::authenticated(WEB);
    let mut ok = get("/api/x");
    ok.headers
        .insert("x-team", HeaderValue::from_static("blue-1"));
    assert!(allowed(&p, &peer, &ok));

    let mut exact = get("/health");
    exact.headers = ok.headers.clone();
    assert!(allowed(&p, &peer, &exact));

    let mut wrong_path = get("/healthz");
    wrong_path.headers = ok.headers.clone();
    assert!(!allowed(&p, &peer, &wrong_path));

    let mut wrong_method = get("/api/x");
    wrong_method.method = Method::POST;
    wrong_method.headers = ok.headers.clone();
    assert!(!allowed(&p, &peer, &wrong_method));

    let no_header = get("/api/x");
    assert!(!allowed(&p, &peer, &no_header));

    let mut wrong_port = get("/api/x");
    wrong_port.headers = ok.headers.clone();
    wrong_port.port = 8080;
    assert!(!allowed(&p, &peer, &wrong_port));
}

#[test]
fn header_exact_and_present() {
    let header = |value| Target {
        headers: vec![HeaderRule {
            name: HeaderName::from_static("x-debug"),
            value,
        }],
        ..Target::default()
    };
    let p = Policy {
        default: Action::Allow,
        rules: vec![
            rule(
                "no-debug",
                Action::Deny,
                Source::default(),
                header(HeaderRuleValue::Present(true)),
            ),
            rule(
                "exact",
                Action::Allow,
                Source::default(),
                header(HeaderRuleValue::Exact("1".into())),
            ),
        ],
    };
    let mut with = get("/");
    with.headers
        .insert("x-debug", HeaderValue::from_static("1"));
    let d = decide(&p, &Peer::authenticated(WEB), &with);
    assert_eq!(d.rule, "no-debug");
    assert_eq!(
        decide(&p, &Peer::authenticated(WEB), &get("/")).rule,
        DEFAULT_RULE
    );
}

#[test]
fn connection_check_fails_closed_on_http_only_rules() {
    let paths = Target {
        paths: vec![PathRule::Prefix("/admin".into())],
        ..Target::default()
    };
    let allow_http_only = deny_by_default(vec![rule(
        "api",
        Action::Allow,
        Source::default(),
        paths.clone(),
    )]);
    assert!(!tcp(&allow_http_only, &Peer::authenticated(WEB)).allowed());

    let deny_http_only = Policy {
        default: Action::Allow,
        rules: vec![rule("admin", Action::Deny, ids(&[WEB]), paths)],
    };
    let d = tcp(&deny_http_only, &Peer::authenticated(WEB));
    assert_eq!((d.action, d.rule.as_str()), (Action::Deny, "admin"));
    assert!(tcp(&deny_http_only, &Peer::authenticated(ADMIN)).allowed());
}

#[test]
fn decode_rejects_bad_fields_by_name() {
    use trellis_api::config as pb;
    let msg = pb::AuthorizationPolicy {
        default_action: pb::AuthzAction::Deny as i32,
        rules: vec![pb::AuthzRule {
            name: "r".into(),
            action: 9,
            ..Default::default()
        }],
    };
    let err = decode_policy(Some(msg)).map(|_| ()).unwrap_err();
    assert!(err.contains("authorization.rules[0].action"), "{err}");
    let shadowing = pb::AuthorizationPolicy {
        default_action: pb::AuthzAction::Deny as i32,
        rules: vec![pb::AuthzRule {
            name: "default".into(),
            action: pb::AuthzAction::Allow as i32,
            ..Default::default()
        }],
    };
    let err = decode_policy(Some(shadowing)).map(|_| ()).unwrap_err();
    assert!(err.contains("rules[0].name: \"default\""), "{err}");
    let policy = decode_policy(None).map_err(|e| e.to_string());
    assert!(matches!(policy, Ok(Policy { default: Action::Allow, ref rules }) if rules.is_empty()));
}

fn store_with(policy: Policy) -> crate::config::SnapshotStore {
    let store = new_store();
    store.store(Arc::new(MeshSnapshot {
        inbound: Some(InboundPolicy {
            ports: vec![AppPort {
                port: 80,
                target_port: 8080,
                protocol: AppProtocol::Http1,
            }],
            mtls: MtlsMode::Strict,
            authorization: policy,
        }),
        ..MeshSnapshot::default()
    }));
    store
}

#[tokio::test]
async fn layer_refuses_with_the_rule_and_counts() {
    use tower::{Layer, Service, ServiceExt};
    let policy = Policy {
        default: Action::Allow,
        rules: vec![rule(
            "no-admin",
            Action::Deny,
            Source::default(),
            Target {
                paths: vec![PathRule::Prefix("/admin".into())],
                ..Target::default()
            },
        )],
    };
    let stats = Arc::new(AuthzStats::default());
    let layer = AuthzLayer::new(store_with(policy), Peer::authenticated(WEB), stats.clone());
    let mut svc = layer.layer(tower::service_fn(|_req: Request<()>| async {
        Ok::<_, ProxyError>("reached the app")
    }));
    let req = |p: &str| {
        Request::get(p)
            .header("host", "web")
            .body(())
            .unwrap_or_default()
    };
    let ok = svc.ready().await.expect("ready").call(req("/x")).await;
    assert_eq!(ok.ok(), Some("reached the app"));
    let denied = svc
        .ready()
        .await
        .expect("ready")
        .call(req("/admin/x"))
        .await;
    match denied {
        Err(ProxyError::Forbidden { rule }) => assert_eq!(rule, "no-admin"),
        other => panic!("expected Forbidden, got {other:?}"),
    }
    let json = stats.to_json();
    assert_eq!(json["default"]["allowed"], 1);
    assert_eq!(json["no-admin"]["denied"], 1);
}

#[tokio::test]
async fn layer_refuses_before_the_inbound_config_arrives() {
    use tower::{Layer, Service};
    let layer = AuthzLayer::new(new_store(), Peer::authenticated(WEB), Arc::default());
    let mut svc = layer.layer(tower::service_fn(|_req: Request<()>| async {
        Ok::<_, ProxyError>(())
    }));
    let out = svc.call(Request::new(())).await;
    assert!(matches!(out, Err(ProxyError::NotReady(_))), "{out:?}");
}

use http::Request;
