//! Authorization (`proxy/src/authz`): a policy built from fuzz input through the real decoder,
//! decisions on arbitrary callers and requests. Invariants, from the rules in `authz/mod.rs`:
//! - a decision names a rule with that outcome, or `default` with the policy's default;
//! - a policy that can only deny (default deny, no allow rule) denies everything, and one that
//!   can only allow allows everything;
//! - removing the last rule, if it denies, never denies more; if it allows, never allows more;
//! - a connection-level (TCP) check is never more permissive than a request on that connection:
//!   if the connection is admitted, so is every HTTP request from that caller to that port.
#![no_main]

use libfuzzer_sys::{arbitrary, fuzz_target};
use trellis_fuzz as gen;
use trellis_proxy::authz::{
    decode_policy, Action, Attributes, HttpAttributes, Peer, Policy, DEFAULT_RULE,
};

#[derive(arbitrary::Arbitrary, Debug)]
struct Input {
    policy: gen::AuthorizationPolicy,
    requests: Vec<gen::Request>,
}

fn decide(
    policy: &Policy,
    peer: &Peer,
    port: Option<u16>,
    req: Option<&http::Request<()>>,
) -> Action {
    let attrs = Attributes {
        port,
        http: req.map(|r| HttpAttributes {
            method: r.method(),
            path: r.uri().path(),
            headers: r.headers(),
        }),
    };
    let decision = policy.decide(peer, &attrs);
    let named = policy
        .rules
        .iter()
        .any(|r| r.name == decision.rule && r.action == decision.action);
    let by_default = decision.rule == DEFAULT_RULE && decision.action == policy.default;
    assert!(
        named || by_default,
        "{decision:?} names no rule with that outcome"
    );
    decision.action
}

fuzz_target!(|input: Input| {
    let Ok(policy) = decode_policy(Some(input.policy.to_pb())) else {
        return;
    };
    let has = |a: Action| policy.rules.iter().any(|r| r.action == a);
    let shorter = {
        let mut p = policy.clone();
        p.rules.pop();
        p
    };
    for request in &input.requests {
        let peer = Peer {
            identity: request.identity(),
        };
        let http = request.to_http();
        let on_request = decide(&policy, &peer, request.port, Some(&http));
        let on_connection = decide(&policy, &peer, request.port, None);
        if policy.default == Action::Deny && !has(Action::Allow) {
            assert_eq!(on_request, Action::Deny);
            assert_eq!(on_connection, Action::Deny);
        }
        if policy.default == Action::Allow && !has(Action::Deny) {
            assert_eq!(on_request, Action::Allow);
        }
        if on_connection == Action::Allow {
            assert_eq!(
                on_request,
                Action::Allow,
                "TCP admitted, the request on it refused"
            );
        }
        if let Some(last) = policy.rules.last() {
            let without = decide(&shorter, &peer, request.port, Some(&http));
            match last.action {
                Action::Deny if on_request == Action::Allow => assert_eq!(without, Action::Allow),
                Action::Allow if without == Action::Allow => assert_eq!(on_request, Action::Allow),
                _ => {}
            }
        }
    }
});
