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
        match: {path: {prefix: /api}}
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
fn empty_documents_are_refused_and_explicit_empty_services_are_not() {
    for text in [
        "",
        "\n  \n",
        "# only a comment\n# and another\n",
        "---\n",
        "~\n",
        "null",
    ] {
        let error = parse("/etc/mesh.yaml", text).unwrap_err();
        assert!(
            matches!(error, ConfigError::Empty { .. }),
            "{text:?}: {error}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with("/etc/mesh.yaml: the file is empty"),
            "{text:?}: {message}"
        );
    }
    // Content, even without services, is a mesh; a syntax error stays a syntax error.
    assert!(parse("mesh.yaml", "services: []\n").is_ok());
    assert!(parse("mesh.yaml", "# no services yet\nservices: []\n").is_ok());
    assert!(parse("mesh.yaml", "trustDomain: example.org\n").is_ok());
    assert!(matches!(
        parse("mesh.yaml", "services: [\n"),
        Err(ConfigError::Invalid { .. })
    ));
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
    let text = GOOD.replace("prefix: /api", "prefix: api");
    assert!(err(&text).starts_with(
        "mesh.yaml:16:32: services[0].routes[0].match.path.prefix: \"api\" must start with \"/\""
    ));
    let text = GOOD.replace("name: hello", "name: Hello_World");
    assert!(err(&text).starts_with("mesh.yaml:4:11: services[0].name:"));
    let text = "services:\n  - name: a\n    ports: []\n";
    assert!(err(text).starts_with("mesh.yaml:2:11: services[0].ports: at least one port"));
}

#[test]
fn virtual_addresses_parse_and_bad_ones_name_field_and_value() {
    let with = |addresses: &str| {
        GOOD.replace(
            "        targetPort: 8081\n",
            &format!("        targetPort: 8081\n    addresses: {addresses}\n"),
        )
    };
    let mesh = parse("mesh.yaml", &with("[10.96.0.10, \"fd00::10\"]")).unwrap();
    let ips: Vec<std::net::IpAddr> =
        vec!["10.96.0.10".parse().unwrap(), "fd00::10".parse().unwrap()];
    assert_eq!(mesh.services[0].addresses, ips);
    assert!(mesh.services[1].addresses.is_empty(), "optional");

    assert_eq!(
        err(&with("[10.96.0.10, 10.96.0.300]")),
        "mesh.yaml:8:29: services[0].addresses[1]: \"10.96.0.300\" is not an IP address (v4 or \
         v6, without a port)"
    );
    assert_eq!(
        err(&with("[\"10.96.0.10:80\"]")),
        "mesh.yaml:8:17: services[0].addresses[0]: \"10.96.0.10:80\" is not an IP address (v4 \
         or v6, without a port)"
    );
    assert!(
        err(&with("[127.0.0.1]")).starts_with(
            "mesh.yaml:8:17: services[0].addresses[0]: 127.0.0.1 cannot be a service address"
        ),
        "{}",
        err(&with("[127.0.0.1]"))
    );
    // One address, two services: a connection to it could not tell which is meant.
    let text = with("[10.96.0.10]").replace(
        "        protocol: h2c\n",
        "        protocol: h2c\n    addresses: [10.96.0.11, 10.96.0.10]\n",
    );
    assert_eq!(
        err(&text),
        "mesh.yaml:26:29: services[1].addresses[1]: 10.96.0.10 is already \
         services[0].addresses[0]"
    );
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
    assert_eq!(parse_duration("91d"), Some(Duration::from_secs(91 * 86400)));
    assert_eq!(parse_duration("1w"), None);
    assert_eq!(parse_duration("s"), None);
}

/// Every traffic-policy knob set away from its default.
const POLICY: &str = "\
services:
  - name: web
    ports: [{port: 80}]
    policy:
      loadBalancer: consistentHash
      hashOn: {header: X-User}
      connectTimeout: 2s
      idleTimeout: 90s
      retry:
        attempts: 3
        retryOn: [5xx, retriable-status-codes, unavailable]
        statusCodes: [409]
        perTryTimeout: 500ms
        backoff: {base: 10ms, max: 1s}
        budget: {ratio: 0.5, minPerSecond: 5}
        nonIdempotent: true
        replayBuffer: 1MiB
      circuitBreaker:
        maxConnections: 10
        maxPendingRequests: 20
        maxRequests: 30
        maxRetries: 4
      outlierDetection:
        consecutive5xx: 5
        consecutiveGatewayErrors: 0
        baseEjectionTime: 10s
        maxEjectionTime: 1m
        maxEjectionPercent: 30
    routes:
      - name: canary
        match:
          path: {regex: \"/users/[0-9]+\"}
          method: GET
          headers:
            - {name: X-Canary, exact: \"true\"}
            - {name: x-debug, present: false}
        backends:
          - {service: web, weight: 90}
          - {service: shop/web-canary, weight: 10}
        timeout: 5s
        retry: {attempts: 4}
        fault:
          delay: {duration: 100ms, percent: 12.5}
          abort: {status: 503, percent: 5}
      - name: rest
  - name: web-canary
    namespace: shop
    ports: [{port: 80}]
";

/// `line:column` (1-based) of the first occurrence of `needle` in `text`, to check that an error
/// points at the value it complains about.
fn pos(text: &str, needle: &str) -> String {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = offset - before.rfind('\n').map_or(0, |n| n + 1) + 1;
    format!("{line}:{column}")
}

/// Replaces `from` (which must occur) in POLICY and returns the error and where `at` now is.
fn policy_err(from: &str, to: &str, at: &str) -> (String, String) {
    assert!(POLICY.contains(from), "{from:?} not in POLICY");
    let text = POLICY.replacen(from, to, 1);
    (err(&text), format!("mesh.yaml:{}", pos(&text, at)))
}

#[test]
fn policy_parses_every_knob() {
    let mesh = parse("mesh.yaml", POLICY).unwrap();
    let p = &mesh.services[0].policy;
    assert_eq!(p.load_balancer, LoadBalancer::ConsistentHash);
    assert_eq!(p.hash_on, Some(HashOn::Header("x-user".into())));
    assert_eq!(p.connect_timeout, Duration::from_secs(2));
    assert_eq!(p.request_timeout, Duration::from_secs(15));
    assert_eq!(p.idle_timeout, Duration::from_secs(90));
    assert_eq!(
        p.retry,
        Retry {
            attempts: 3,
            retry_on: vec![
                RetryOn::ServerError,
                RetryOn::RetriableStatusCodes,
                RetryOn::Unavailable
            ],
            status_codes: vec![409],
            per_try_timeout: Some(Duration::from_millis(500)),
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            budget_ratio: 0.5,
            budget_min_per_second: 5,
            non_idempotent: true,
            replay_buffer: 1024 * 1024,
        }
    );
    assert_eq!(
        p.circuit_breaker,
        CircuitBreaker {
            max_connections: 10,
            max_pending_requests: 20,
            max_requests: 30,
            max_retries: 4
        }
    );
    assert_eq!(
        p.outlier_detection,
        OutlierDetection {
            consecutive_5xx: 5,
            consecutive_gateway_errors: 0,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(60),
            max_ejection_percent: 30,
        }
    );

    let canary = &mesh.services[0].routes[0];
    assert_eq!(
        canary.r#match,
        RouteMatch {
            path: Some(PathMatch::Regex("/users/[0-9]+".into())),
            method: Some("GET".into()),
            headers: vec![
                HeaderMatch {
                    name: "x-canary".into(),
                    value: HeaderValueMatch::Exact("true".into())
                },
                HeaderMatch {
                    name: "x-debug".into(),
                    value: HeaderValueMatch::Present(false)
                },
            ],
        }
    );
    let clusters: Vec<_> = canary
        .backends
        .iter()
        .map(|b| (b.cluster(), b.weight))
        .collect();
    assert_eq!(
        clusters,
        [("default/web".into(), 90), ("shop/web-canary".into(), 10)]
    );
    assert_eq!(canary.timeout, Some(Duration::from_secs(5)));
    // A route's retry starts from the defaults, not from the service's retry.
    assert_eq!(
        canary.retry,
        Some(Retry {
            attempts: 4,
            ..Retry::default()
        })
    );
    assert_eq!(
        canary.fault,
        Some(Fault {
            delay: Some(FaultDelay {
                duration: Duration::from_millis(100),
                permille: 125
            }),
            abort: Some(FaultAbort {
                status: 503,
                permille: 50
            }),
        })
    );
}

#[test]
fn policy_and_route_defaults() {
    let mesh = parse("mesh.yaml", POLICY).unwrap();
    let rest = &mesh.services[0].routes[1];
    assert_eq!(rest.r#match, RouteMatch::default());
    assert_eq!(
        rest.backends,
        [Backend {
            namespace: "default".into(),
            service: "web".into(),
            weight: 1
        }]
    );
    assert_eq!((rest.timeout, &rest.retry, rest.fault), (None, &None, None));
    assert_eq!(mesh.services[1].policy, Policy::default());

    let p = Policy::default();
    assert_eq!(p.load_balancer, LoadBalancer::P2cEwma);
    assert_eq!(p.hash_on, None);
    assert_eq!(
        (p.connect_timeout, p.request_timeout, p.idle_timeout),
        (
            Duration::from_secs(1),
            Duration::from_secs(15),
            Duration::from_secs(60)
        )
    );
    let r = &p.retry;
    assert_eq!(r.attempts, 2);
    assert_eq!(r.retry_on, [RetryOn::ConnectFailure]);
    assert_eq!(r.per_try_timeout, None);
    assert_eq!(
        (r.backoff_base, r.backoff_max),
        (Duration::from_millis(25), Duration::from_millis(250))
    );
    assert_eq!((r.budget_ratio, r.budget_min_per_second), (0.2, 10));
    assert!(!r.non_idempotent);
    assert_eq!(r.replay_buffer, 65536);
    let cb = p.circuit_breaker;
    assert_eq!(
        (
            cb.max_connections,
            cb.max_pending_requests,
            cb.max_requests,
            cb.max_retries
        ),
        (1024, 1024, 1024, 3)
    );
    let od = p.outlier_detection;
    assert_eq!((od.consecutive_5xx, od.consecutive_gateway_errors), (0, 7));
    assert_eq!(
        (od.base_ejection_time, od.max_ejection_time),
        (Duration::from_secs(30), Duration::from_secs(300))
    );
    assert_eq!(od.max_ejection_percent, 50);

    // Partly given blocks keep the defaults of the fields left out.
    let text = POLICY.replace(
        "        budget: {ratio: 0.5, minPerSecond: 5}",
        "        budget: {ratio: 0.1}",
    );
    let mesh = parse("mesh.yaml", &text).unwrap();
    let r = &mesh.services[0].policy.retry;
    assert_eq!((r.budget_ratio, r.budget_min_per_second), (0.1, 10));
    // Sizes in plain bytes and KiB.
    let text = POLICY.replace("replayBuffer: 1MiB", "replayBuffer: 4096");
    let mesh = parse("mesh.yaml", &text).unwrap();
    assert_eq!(mesh.services[0].policy.retry.replay_buffer, 4096);
    let text = POLICY.replace("replayBuffer: 1MiB", "replayBuffer: 16KiB");
    let mesh = parse("mesh.yaml", &text).unwrap();
    assert_eq!(mesh.services[0].policy.retry.replay_buffer, 16384);
}

#[test]
fn negative_per_try_timeout_is_refused() {
    let (e, at) = policy_err("perTryTimeout: 500ms", "perTryTimeout: -500ms", "-500ms");
    assert_eq!(
        e,
        format!(
            "{at}: services[0].policy.retry.perTryTimeout: \"-500ms\" must be greater than zero"
        )
    );
    let (e, at) = policy_err("timeout: 5s", "timeout: -5s", "-5s");
    assert_eq!(
        e,
        format!("{at}: services[0].routes[0].timeout: \"-5s\" must be greater than zero")
    );
}

#[test]
fn budget_ratio_over_one_is_refused() {
    let (e, at) = policy_err("ratio: 0.5", "ratio: 1.5", "1.5");
    assert_eq!(
        e,
        format!("{at}: services[0].policy.retry.budget.ratio: 1.5 is over 1")
    );
    let (e, at) = policy_err("ratio: 0.5", "ratio: -0.1", "-0.1");
    assert_eq!(
        e,
        format!("{at}: services[0].policy.retry.budget.ratio: -0.1 is below 0")
    );
}

#[test]
fn unknown_retry_condition_is_refused() {
    let (e, at) = policy_err("unavailable]", "sometimes]", "sometimes");
    assert_eq!(
        e,
        format!(
            "{at}: services[0].policy.retry.retryOn[2]: unknown condition \"sometimes\" (expected \
             one of 5xx, gateway-error, reset, connect-failure, retriable-status-codes, cancelled, \
             deadline-exceeded, internal, resource-exhausted, unavailable)"
        )
    );
    let (e, at) = policy_err("[5xx, retriable", "[5xx, 5xx, retriable", "5xx, retri");
    assert_eq!(
        e,
        format!("{at}: services[0].policy.retry.retryOn[1]: \"5xx\" repeats services[0].policy.retry.retryOn[0]")
    );
}

#[test]
fn bad_regex_is_refused() {
    let (e, at) = policy_err("[0-9]+", "[0-9+", "\"/users");
    assert_eq!(
        e,
        format!(
            "{at}: services[0].routes[0].match.path.regex: \"/users/[0-9+\" is not a valid regex: \
             unclosed character class"
        )
    );
}

#[test]
fn unknown_backend_service_is_refused() {
    let (e, at) = policy_err("service: web,", "service: ghost,", "ghost");
    assert_eq!(
        e,
        format!("{at}: services[0].routes[0].backends[0].service: no service \"ghost\" in namespace \"default\"")
    );
    let (e, at) = policy_err(
        "shop/web-canary",
        "default/web-canary",
        "default/web-canary",
    );
    assert_eq!(
        e,
        format!("{at}: services[0].routes[0].backends[1].service: no service \"web-canary\" in namespace \"default\"")
    );
}

#[test]
fn consistent_hash_needs_hash_on_and_only_it_takes_one() {
    let (e, at) = policy_err("      hashOn: {header: X-User}\n", "", "consistentHash");
    assert_eq!(
        e,
        format!(
            "{at}: services[0].policy.hashOn: is required by loadBalancer consistentHash \
             ({{header: NAME}} or {{cookie: NAME}})"
        )
    );
    let (e, at) = policy_err("consistentHash", "roundRobin", "{header");
    assert_eq!(
        e,
        format!("{at}: services[0].policy.hashOn: only applies to loadBalancer consistentHash")
    );
    let (e, at) = policy_err("{header: X-User}", "{header: a, cookie: b}", "{header");
    assert_eq!(
        e,
        format!("{at}: services[0].policy.hashOn: give exactly one of header, cookie")
    );
}

#[test]
fn fault_percent_over_100_is_refused() {
    let (e, at) = policy_err("percent: 12.5", "percent: 150", "150");
    assert_eq!(
        e,
        format!("{at}: services[0].routes[0].fault.delay.percent: 150 is over 100")
    );
    let (e, at) = policy_err("percent: 12.5", "percent: 12.25", "12.25");
    assert_eq!(
        e,
        format!("{at}: services[0].routes[0].fault.delay.percent: 12.25 has more than one decimal (steps are 0.1)")
    );
    let (e, at) = policy_err("status: 503", "status: 99", "99");
    assert_eq!(
        e,
        format!("{at}: services[0].routes[0].fault.abort.status: 99 is not in 200..=599")
    );
}

#[test]
fn max_ejection_time_below_base_is_refused() {
    let (e, at) = policy_err("maxEjectionTime: 1m", "maxEjectionTime: 5s", "5s\n");
    assert_eq!(
        e,
        format!("{at}: services[0].policy.outlierDetection.maxEjectionTime: \"5s\" is less than baseEjectionTime 10s")
    );
    // With the default max, the error is on the base and says what the default is.
    let text = POLICY
        .replacen("        maxEjectionTime: 1m\n", "", 1)
        .replacen("baseEjectionTime: 10s", "baseEjectionTime: 10m", 1);
    assert_eq!(
        err(&text),
        format!(
            "mesh.yaml:{}: services[0].policy.outlierDetection.baseEjectionTime: \"10m\" is over \
             maxEjectionTime (default 300s); set maxEjectionTime too",
            pos(&text, "10m\n")
        )
    );
}

#[test]
fn unknown_field_inside_retry_is_refused() {
    let (e, at) = policy_err(
        "nonIdempotent: true",
        "nonIdempotnet: true",
        "nonIdempotnet",
    );
    assert!(e.starts_with(&at[..at.rfind(':').unwrap()]), "{e} at {at}");
    assert!(e.contains("services[0].policy.retry.nonIdempotnet"), "{e}");
    assert!(e.contains("nonIdempotnet"), "{e}");
}

#[test]
fn other_policy_rules() {
    let cases = [
        // (from, to, where the error points, expected "path: reason")
        (
            "attempts: 3",
            "attempts: 11",
            "11",
            "services[0].policy.retry.attempts: 11 is not in 1..=10",
        ),
        (
            "statusCodes: [409]",
            "statusCodes: [409, 700]",
            "700",
            "services[0].policy.retry.statusCodes[1]: 700 is not in 100..=599",
        ),
        (
            "[5xx, retriable-status-codes, unavailable]",
            "[5xx]",
            "[409]",
            "services[0].policy.retry.statusCodes: has no effect unless retryOn lists \
             retriable-status-codes",
        ),
        (
            "        statusCodes: [409]\n",
            "",
            "[5xx",
            "services[0].policy.retry.retryOn: retriable-status-codes needs statusCodes",
        ),
        (
            "[5xx, retriable-status-codes, unavailable]",
            "[]",
            "[]",
            "services[0].policy.retry.retryOn: name at least one condition (attempts: 1 turns \
             retries off)",
        ),
        (
            "max: 1s}",
            "max: 5ms}",
            "5ms",
            "services[0].policy.retry.backoff.max: \"5ms\" is less than base 10ms",
        ),
        (
            "replayBuffer: 1MiB",
            "replayBuffer: 17MiB",
            "17MiB",
            "services[0].policy.retry.replayBuffer: \"17MiB\" is over 16MiB",
        ),
        (
            "replayBuffer: 1MiB",
            "replayBuffer: 1GB",
            "1GB",
            "services[0].policy.retry.replayBuffer: \"1GB\" is not a size like 65536, 64KiB or 1MiB",
        ),
        (
            "maxRequests: 30",
            "maxRequests: 0",
            "0\n        maxRetries",
            "services[0].policy.circuitBreaker.maxRequests: 0 is below 1",
        ),
        (
            "maxEjectionPercent: 30",
            "maxEjectionPercent: 101",
            "101",
            "services[0].policy.outlierDetection.maxEjectionPercent: 101 is not in 0..=100",
        ),
        (
            "consecutive5xx: 5",
            "consecutive5xx: -1",
            "-1",
            "services[0].policy.outlierDetection.consecutive5xx: -1 is below 0",
        ),
        (
            "idleTimeout: 90s",
            "idleTimeout: 0s",
            "0s",
            "services[0].policy.idleTimeout: \"0s\" must be greater than zero",
        ),
        (
            "{regex: \"/users/[0-9]+\"}",
            "{prefix: /a, exact: /b}",
            "{prefix",
            "services[0].routes[0].match.path: give exactly one of exact, prefix, regex",
        ),
        (
            "method: GET",
            "method: get",
            "get\n",
            "services[0].routes[0].match.method: \"get\" is not an upper-case HTTP method such \
             as GET or POST",
        ),
        (
            "{name: x-debug, present: false}",
            "{name: x-debug}",
            "x-debug",
            "services[0].routes[0].match.headers[1]: give exactly one of exact, prefix, regex, \
             present",
        ),
        (
            "{name: X-Canary,",
            "{name: \"X Canary\",",
            "\"X Canary",
            "services[0].routes[0].match.headers[0].name: \"X Canary\" is not a valid header name",
        ),
        (
            "weight: 90}",
            "weight: 10001}",
            "10001",
            "services[0].routes[0].backends[0].weight: 10001 is not in 0..=10000",
        ),
        (
            "service: shop/web-canary,",
            "service: web,",
            "web, weight: 10",
            "services[0].routes[0].backends[1].service: \"web\" repeats backends[0]; give it one \
             entry with the summed weight",
        ),
        (
            "        backends:\n          - {service: web, weight: 90}\n          - {service: \
             shop/web-canary, weight: 10}\n",
            "        backends: []\n",
            "[]",
            "services[0].routes[0].backends: name at least one backend (or leave backends out to \
             send to this service)",
        ),
        (
            "- name: rest",
            "- name: canary",
            "canary\n  -",
            "services[0].routes[1].name: route \"canary\" repeats routes[0]",
        ),
        (
            "- name: rest",
            "- name: a.b",
            "a.b",
            "services[0].routes[1].name: \"a.b\" is not a DNS-1123 label (lower-case letters, \
             digits, '-', at most 63)",
        ),
    ];
    for (from, to, at, expected) in cases {
        assert!(POLICY.contains(from), "{from:?} not in POLICY");
        let text = POLICY.replacen(from, to, 1);
        assert_eq!(
            err(&text),
            format!("mesh.yaml:{}: {expected}", pos(&text, at)),
            "replacing {from:?} with {to:?}"
        );
    }
    // Weights that sum to zero.
    let text = POLICY
        .replace("weight: 90}", "weight: 0}")
        .replace("weight: 10}", "weight: 0}");
    assert_eq!(
        err(&text),
        format!(
            "mesh.yaml:{}: services[0].routes[0].backends: the weights sum to 0; at least one \
             must be above 0",
            pos(&text, "- {service: web, weight: 0}")
        )
    );
}
