use super::*;

const GOOD: &str = "\
trustDomain: example.org
certificateLifetime: 2h
services:
  - name: hello
    ports:
      - port: 80
        targetPort: 8081
    endpoints:
      - address: 127.0.0.1:4143
        weight: 3
    policy:
      loadBalancer: roundRobin
      requestTimeout: 500ms
    routes:
      - name: api
        pathPrefix: /api
        timeout: 5s
  - name: web
    namespace: shop
    serviceAccount: web-sa
    mtls: permissive
    ports:
      - port: 8080
        protocol: h2c
";

/// Parses `text` and returns the error's display text.
fn err(text: &str) -> String {
    parse("mesh.yaml", text).unwrap_err().to_string()
}

#[test]
fn parses_with_defaults() {
    let mesh = parse("mesh.yaml", GOOD).unwrap();
    assert_eq!(mesh.trust_domain, "example.org");
    assert_eq!(mesh.cluster_domain, "cluster.local");
    assert_eq!(mesh.certificate_lifetime, Duration::from_secs(7200));
    let hello = &mesh.services[0];
    assert_eq!(hello.namespace, "default");
    assert_eq!(hello.service_account, "hello");
    assert_eq!(hello.mtls, MtlsMode::Strict);
    assert_eq!(
        hello.ports,
        vec![Port {
            port: 80,
            target_port: 8081,
            protocol: Protocol::Http1
        }]
    );
    assert_eq!(
        hello.endpoints[0].address,
        "127.0.0.1:4143".parse().unwrap()
    );
    assert_eq!(hello.endpoints[0].weight, 3);
    assert_eq!(hello.policy.load_balancer, LoadBalancer::RoundRobin);
    assert_eq!(hello.policy.connect_timeout, Duration::from_secs(1));
    assert_eq!(hello.policy.request_timeout, Duration::from_millis(500));
    assert_eq!(hello.routes[0].timeout, Some(Duration::from_secs(5)));
    let web = &mesh.services[1];
    assert_eq!(
        (web.namespace.as_str(), web.service_account.as_str()),
        ("shop", "web-sa")
    );
    assert_eq!(web.mtls, MtlsMode::Permissive);
    assert_eq!(web.ports[0].target_port, 8080);
    assert_eq!(web.ports[0].protocol, Protocol::H2c);
    assert_eq!(web.policy, Policy::default());
}

#[test]
fn empty_document_fields_default() {
    let mesh = parse("mesh.yaml", "services: []\n").unwrap();
    assert_eq!(mesh.trust_domain, "trellis.local");
    assert_eq!(mesh.certificate_lifetime, Duration::from_secs(86400));
}

#[test]
fn bad_address_names_line_and_path() {
    let text = GOOD.replace("127.0.0.1:4143", "\"127.0.0.1:x\"");
    assert_eq!(
        err(&text),
        "mesh.yaml:9:18: services[0].endpoints[0].address: \"127.0.0.1:x\" is not an ip:port address"
    );
}

#[test]
fn unknown_field_names_line_and_path() {
    let text = GOOD.replace("        weight: 3", "        wieght: 3");
    let e = err(&text);
    assert!(e.starts_with("mesh.yaml:10:"), "{e}");
    assert!(e.contains("services[0].endpoints[0].wieght"), "{e}");
    assert!(e.contains("wieght"), "{e}");
}

#[test]
fn type_error_names_line_and_path() {
    let text = GOOD.replace("port: 80", "port: eighty");
    let e = err(&text);
    assert!(e.starts_with("mesh.yaml:6:"), "{e}");
    assert!(e.contains("services[0].ports[0].port"), "{e}");
}

#[test]
fn bad_duration_names_line_and_path() {
    let text = GOOD.replace("timeout: 5s", "timeout: 5 parsecs");
    assert!(err(&text).starts_with(
        "mesh.yaml:17:18: services[0].routes[0].timeout: \"5 parsecs\" is not a duration"
    ));
    let text = GOOD.replace("certificateLifetime: 2h", "certificateLifetime: 91d");
    assert!(err(&text).starts_with("mesh.yaml:2:22: certificateLifetime:"));
    let text = GOOD.replace("certificateLifetime: 2h", "certificateLifetime: 2400h");
    assert!(err(&text).contains("must be between 1s and 90 days"));
}

#[test]
fn zero_and_negative_timeouts_are_refused() {
    let text = GOOD.replace("requestTimeout: 500ms", "requestTimeout: 0s");
    assert_eq!(
        err(&text),
        "mesh.yaml:13:23: services[0].policy.requestTimeout: \"0s\" must be greater than zero"
    );
    let text = GOOD.replace("requestTimeout: 500ms", "connectTimeout: -1s");
    assert_eq!(
        err(&text),
        "mesh.yaml:13:23: services[0].policy.connectTimeout: \"-1s\" must be greater than zero"
    );
}

#[test]
fn duplicate_service_names_both_indexes() {
    let text = GOOD.replace(
        "  - name: web\n    namespace: shop",
        "  - name: hello\n    namespace: default",
    );
    assert_eq!(
        err(&text),
        "mesh.yaml:18:11: services[1].name: service \"default/hello\" repeats services[0]"
    );
}

#[test]
fn bad_enum_value_names_line_and_path() {
    let text = GOOD.replace("mtls: permissive", "mtls: sometimes");
    assert!(
        err(&text).starts_with("mesh.yaml:21:11: services[1].mtls: \"sometimes\" is not one of")
    );
    let text = GOOD.replace("protocol: h2c", "protocol: h3");
    assert!(err(&text).starts_with("mesh.yaml:24:19: services[1].ports[0].protocol:"));
    let text = GOOD.replace("roundRobin", "random");
    assert!(err(&text).starts_with("mesh.yaml:12:21: services[0].policy.loadBalancer:"));
}

#[test]
fn other_field_rules() {
    let text = GOOD.replace("port: 80", "port: 70000");
    assert!(
        err(&text).starts_with("mesh.yaml:6:15: services[0].ports[0].port: 70000 is not a port")
    );
    let text = GOOD.replace("weight: 3", "weight: 0");
    assert!(err(&text).starts_with("mesh.yaml:10:17: services[0].endpoints[0].weight:"));
    let text = GOOD.replace("pathPrefix: /api", "pathPrefix: api");
    assert!(err(&text).starts_with("mesh.yaml:16:21: services[0].routes[0].pathPrefix:"));
    let text = GOOD.replace("name: hello", "name: Hello_World");
    assert!(err(&text).starts_with("mesh.yaml:4:11: services[0].name:"));
    let text = "services:\n  - name: a\n    ports: []\n";
    assert!(err(text).starts_with("mesh.yaml:2:11: services[0].ports: at least one port"));
}

#[test]
fn syntax_error_has_position() {
    let e = err("services: [\n  - name: a\n");
    assert!(e.starts_with("mesh.yaml:"), "{e}");
    let mut parts = e.splitn(4, ':');
    assert_eq!(parts.next(), Some("mesh.yaml"));
    assert!(parts.next().unwrap().parse::<u64>().is_ok(), "{e}");
    assert!(parts.next().unwrap().parse::<u64>().is_ok(), "{e}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("3m"), Some(Duration::from_secs(180)));
    assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86400)));
    assert_eq!(parse_duration("10"), None);
    assert_eq!(parse_duration("1d"), None);
    assert_eq!(parse_duration("s"), None);
}
