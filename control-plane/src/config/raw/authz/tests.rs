use crate::config::{parse, AuthzAction, ConfigError, HeaderValueMatch, PathMatch};

fn service(authz: &str) -> String {
    let mut text = String::from(
        "services:\n  - name: web\n    ports: [{port: 80}, {port: 9090}]\n    authorization:\n",
    );
    for line in authz.lines() {
        text.push_str("      ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

fn error(text: &str) -> (u64, String) {
    match parse("mesh.yaml", text) {
        Err(ConfigError::Invalid {
            line, path, reason, ..
        }) => (line, format!("{path}: {reason}")),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn a_full_policy_parses() {
    let text = service(
        "default: deny
rules:
  - name: admins
    action: allow
    from: {identities: [\"spiffe://td/ns/ops/sa/admin\", \"spiffe://td/ns/ops/*\"], namespaces: [ops]}
    to: {ports: [9090], paths: [{exact: /metrics}, {prefix: /debug/}], methods: [GET], headers: [{name: X-Team, present: true}]}
  - name: public
    action: deny
    from: {unauthenticated: true}",
    );
    let mesh = parse("mesh.yaml", &text).expect("valid");
    let authz = mesh.services[0].authorization.as_ref().expect("policy");
    assert_eq!(authz.default, AuthzAction::Deny);
    let admins = &authz.rules[0];
    assert_eq!(admins.action, AuthzAction::Allow);
    assert_eq!(admins.from.identities.len(), 2);
    assert_eq!(admins.from.namespaces, vec!["ops"]);
    assert_eq!(admins.to.ports, vec![9090]);
    assert_eq!(admins.to.paths[1], PathMatch::Prefix("/debug/".into()));
    assert_eq!(admins.to.headers[0].name, "x-team");
    assert_eq!(admins.to.headers[0].value, HeaderValueMatch::Present(true));
    assert_eq!(authz.rules[1].from.unauthenticated, Some(true));
}

#[test]
fn bad_fields_are_refused_with_line_and_path() {
    let cases: &[(&str, u64, &str)] = &[
        (
            "default: maybe",
            5,
            "services[0].authorization.default: \"maybe\" is not one of allow, deny",
        ),
        (
            "rules:\n  - name: r\n    action: permit",
            7,
            "services[0].authorization.rules[0].action: \"permit\" is not one of allow, deny",
        ),
        (
            "rules:\n  - name: r\n    action: allow\n    from: {identities: [\"spiffe://td/*/sa/x\"]}",
            8,
            "rules[0].from.identities[0]",
        ),
        (
            "rules:\n  - name: r\n    action: allow\n    from: {identities: [\"*\"], unauthenticated: true}",
            8,
            "rules[0].from.unauthenticated: an unauthenticated caller has no identity",
        ),
        (
            "rules:\n  - name: r\n    action: allow\n    to: {paths: [{prefix: api}]}",
            8,
            "rules[0].to.paths[0].prefix: \"api\" must start with \"/\"",
        ),
        (
            "rules:\n  - name: r\n    action: allow\n    to: {methods: [get]}",
            8,
            "rules[0].to.methods[0]",
        ),
        (
            "rules:\n  - name: r\n    action: allow\n    to: {headers: [{name: x, exact: a, present: true}]}",
            8,
            "rules[0].to.headers[0]: give exactly one of exact, prefix, present",
        ),
        (
            "rules:\n  - name: r\n    action: allow\n  - name: r\n    action: deny",
            8,
            "rules[1].name: rule \"r\" repeats rules[0]",
        ),
        (
            "rules:\n  - name: default\n    action: deny",
            6,
            "rules[0].name: \"default\" names the policy's default action",
        ),
        (
            "rules:\n  - name: r\n    action: allow\n    when: now",
            8,
            "",
        ),
    ];
    for (policy, line, expected) in cases {
        let (at, text) = error(&service(policy));
        assert!(text.contains(expected), "{policy}: {text}");
        assert_eq!(at, *line, "{policy}: {text}");
    }
}

#[test]
fn extra_roots_are_read_relative_to_the_config_file() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = crate::ca::CertificateAuthority::generate().expect("ca");
    std::fs::write(dir.path().join("next-root.pem"), ca.root_pem()).expect("write");
    let config = dir.path().join("mesh.yaml");
    let text = "trust:\n  extraRoots: [next-root.pem]\nservices: []\n";
    let mesh = parse(&config.display().to_string(), text).expect("valid");
    assert_eq!(mesh.trust.extra_roots_der, vec![ca.root_der().to_vec()]);

    let missing = "trust:\n  extraRoots: [nowhere.pem]\nservices: []\n";
    let (line, text) = error(missing);
    assert_eq!(line, 2);
    assert!(
        text.starts_with("trust.extraRoots[0]: cannot read"),
        "{text}"
    );

    // A workload certificate is not a root.
    let leaf = rcgen::generate_simple_self_signed(vec!["x".to_owned()]).expect("leaf");
    std::fs::write(dir.path().join("leaf.pem"), leaf.cert.pem()).expect("write");
    let text = "trust:\n  extraRoots: [leaf.pem]\nservices: []\n";
    match parse(&config.display().to_string(), text) {
        Err(e) => assert!(e.to_string().contains("is not a CA"), "{e}"),
        Ok(_) => panic!("a leaf was accepted as a root"),
    }
}
