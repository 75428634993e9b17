//! A service's authorization policy in its protocol form (`trellis.config.v1.AuthorizationPolicy`,
//! carried in the service's `InboundConfig`).
use trellis_api::config as pb;

use crate::config::{Authorization, AuthzAction, HeaderValueMatch, PathMatch};

fn action(a: AuthzAction) -> i32 {
    match a {
        AuthzAction::Allow => pb::AuthzAction::Allow as i32,
        AuthzAction::Deny => pb::AuthzAction::Deny as i32,
    }
}

pub(super) fn authorization(a: &Authorization) -> pb::AuthorizationPolicy {
    use pb::header_match::Value;
    pb::AuthorizationPolicy {
        default_action: action(a.default),
        rules: (a.rules.iter())
            .map(|r| pb::AuthzRule {
                name: r.name.clone(),
                action: action(r.action),
                from: Some(pb::AuthzSource {
                    identities: r.from.identities.clone(),
                    namespaces: r.from.namespaces.clone(),
                    unauthenticated: r.from.unauthenticated,
                }),
                to: Some(pb::AuthzTarget {
                    ports: r.to.ports.iter().map(|p| u32::from(*p)).collect(),
                    paths: (r.to.paths.iter())
                        .filter_map(|p| match p {
                            PathMatch::Exact(e) => Some(pb::authz_path::Kind::Exact(e.clone())),
                            PathMatch::Prefix(p) => Some(pb::authz_path::Kind::Prefix(p.clone())),
                            // Validation admits exact and prefix only.
                            PathMatch::Regex(_) => None,
                        })
                        .map(|kind| pb::AuthzPath { kind: Some(kind) })
                        .collect(),
                    methods: r.to.methods.clone(),
                    headers: (r.to.headers.iter())
                        .map(|h| pb::HeaderMatch {
                            name: h.name.clone(),
                            value: Some(match &h.value {
                                HeaderValueMatch::Exact(s) => Value::Exact(s.clone()),
                                HeaderValueMatch::Prefix(s) => Value::Prefix(s.clone()),
                                HeaderValueMatch::Regex(s) => Value::Regex(s.clone()),
                                HeaderValueMatch::Present(b) => Value::Present(*b),
                            }),
                        })
                        .collect(),
                }),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use trellis_api::config as pb;
    use trellis_api::type_url;

    use crate::config::parse;
    use crate::resources::build;

    fn decode<M: Message + Default>(snap: &super::super::Snapshot, t: &str, name: &str) -> M {
        let res = &snap.of_type(t).expect("type")[name];
        M::decode(res.payload.as_slice()).expect("decodes")
    }

    #[test]
    fn access_parts_reach_the_protocol() {
        let dir = tempfile::tempdir().expect("dir");
        let next = crate::ca::CertificateAuthority::generate().expect("ca");
        std::fs::write(dir.path().join("next.pem"), next.root_pem()).expect("write");
        let text = "\
trust: {extraRoots: [next.pem]}
services:
  - name: web
    mtls: disabled
    ports: [{port: 80}]
    endpoints: [{address: 10.0.0.1:4143}]
    authorization:
      default: deny
      rules:
        - name: ops
          action: allow
          from: {namespaces: [ops], identities: [\"spiffe://trellis.local/*\"]}
          to: {paths: [{prefix: /}], headers: [{name: x-a, exact: b}]}
";
        let config = parse(&dir.path().join("mesh.yaml").display().to_string(), text).expect("ok");
        let snap = build(&config, &[b"current-root".to_vec()], 1);
        let trust: pb::TrustBundle = decode(&snap, type_url::TRUST_BUNDLE, "default");
        assert_eq!(
            trust.roots_der,
            vec![b"current-root".to_vec(), next.root_der().to_vec()]
        );
        let inbound: pb::InboundConfig = decode(&snap, type_url::INBOUND, "default/web");
        let authz = inbound.authorization.expect("policy");
        assert_eq!(authz.default_action, pb::AuthzAction::Deny as i32);
        let rule = &authz.rules[0];
        assert_eq!(rule.action, pb::AuthzAction::Allow as i32);
        let from = rule.from.as_ref().expect("from");
        assert_eq!(from.namespaces, vec!["ops"]);
        assert_eq!(from.unauthenticated, None);
        let to = rule.to.as_ref().expect("to");
        assert_eq!(
            to.paths[0].kind,
            Some(pb::authz_path::Kind::Prefix("/".into()))
        );
        assert_eq!(to.headers[0].name, "x-a");
        let eps: pb::Endpoints = decode(&snap, type_url::ENDPOINTS, "default/web");
        assert!(
            eps.endpoints[0].plaintext,
            "mTLS disabled: callers connect in plaintext"
        );
    }
}
