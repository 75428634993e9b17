//! What the admin port shows people: `/config` in one key style (camelCase), durations as the
//! mesh YAML writes them, times in RFC 3339; `/explain` and `/tap` refuse what they cannot answer
//! with the fix; the Grafana dashboards in deploy/grafana query only metrics the proxy exports, and
//! a real Prometheus answers them. (The CLI commands are tested in cli/tests/operability.rs.)

use serde_json::Value;
use std::time::Duration;
use trellis_tests::mesh::wait_until;
use trellis_tests::prometheus::Prometheus;
use trellis_tests::tools::require;
use trellis_tests::traffic::SteadyTraffic;
use trellis_tests::{Mesh, Service};

/// Every field name in `v` (with its parent), skipping the keys of maps keyed by data (resource
/// names, addresses, type URLs).
fn field_names(v: &Value, parents: [&str; 2], out: &mut Vec<String>) {
    const DATA: [&str; 4] = ["versions", "clusters", "routes", "virtualAddresses"];
    match v {
        Value::Object(map) => {
            let data = DATA.contains(&parents[0]) || parents[1] == "versions";
            for (k, child) in map {
                if !data {
                    out.push(format!("{}.{k}", parents[0]));
                }
                field_names(child, [k, parents[0]], out);
            }
        }
        Value::Array(items) => (items.iter()).for_each(|item| field_names(item, parents, out)),
        _ => {}
    }
}

#[tokio::test]
async fn config_uses_camel_case_human_durations_and_rfc3339() {
    let policy = "policy:\n  requestTimeout: 3s\n  retry: {attempts: 2, perTryTimeout: 250ms}\n";
    let mesh = Mesh::client_and(Service::http1("hello").yaml(policy)).await;
    // The client has called hello, so its sidecar holds hello's cluster (on demand).
    let (rsp, _) = (mesh.client("client", false).get("hello", "/").await).expect("request");
    assert_eq!(rsp.status(), 200);
    let doc = mesh.config_doc(0).await;

    let mut names = Vec::new();
    field_names(&doc, ["", ""], &mut names);
    let snake: Vec<&String> = names
        .iter()
        .filter(|n| n.rsplit('.').next().is_some_and(|k| k.contains('_')))
        .collect();
    assert!(names.len() > 40, "walked the whole document: {names:?}");
    assert!(snake.is_empty(), "snake_case keys in /config: {snake:?}");
    assert!(!names.iter().any(|n| n.ends_with(".secs")), "{names:?}");

    let hello = (doc["config"]["clusters"].as_object().into_iter().flatten())
        .find(|(name, _)| name.ends_with("hello"))
        .map(|(_, c)| c)
        .unwrap_or_else(|| panic!("no hello cluster: {doc}"));
    let policy = &hello["policy"];
    assert_eq!(policy["requestTimeout"], "3s", "{policy}");
    assert_eq!(policy["retry"]["perTryTimeout"], "250ms", "{policy}");
    assert_eq!(policy["outlier"]["baseEjection"], "30s", "{policy}");
    assert_eq!(hello["endpoints"][0]["state"]["ejectedFor"], Value::Null);

    let identity = &doc["identity"];
    let not_after = identity["notAfter"].as_str().unwrap_or_default();
    let unix = trellis_proxy::identity::parse_rfc3339(not_after)
        .unwrap_or_else(|| panic!("notAfter {not_after:?} is not RFC 3339"));
    let left = identity_expires_in(&doc);
    let now = trellis_proxy::identity::unix_now();
    assert!((unix - now - left).abs() <= 2, "{identity}");
    assert!(identity["spiffeId"].as_str().is_some(), "{identity}");
    assert!(identity.get("notAfterUnix").is_none(), "{identity}");
}

fn identity_expires_in(doc: &Value) -> i64 {
    doc["certificateExpiresInSeconds"]
        .as_i64()
        .unwrap_or_default()
}

#[tokio::test]
async fn explain_and_tap_say_what_to_fix_in_a_bad_query() {
    let mesh = Mesh::client_and(Service::http1("hello")).await;
    let (status, text) = mesh.admin_get(0, "/explain?path=/x").await.expect("admin");
    assert_eq!(
        (status, text.as_str()),
        (400, "missing authority: add ?authority=<service>[:port]\n")
    );
    let (status, text) = mesh.admin_get(0, "/tap?max=all").await.expect("admin");
    assert_eq!(
        (status, text.as_str()),
        (400, "max=\"all\": expected a whole number\n")
    );
    let (status, text) = mesh
        .admin_get(0, "/explain?authority=hello&path=/a%2520b")
        .await
        .expect("admin");
    assert_eq!(status, 200, "{text}");
    let doc: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        doc["request"]["path"], "/a%20b",
        "the path as sent on the wire"
    );
}

/// Every PromQL expression of the dashboards in deploy/grafana, with its panel, and the
/// dashboards' variables filled in as Grafana would for "All" over a one-minute rate window.
fn dashboard_queries() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana");
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/grafana") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("dashboard");
        let doc: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        for panel in doc["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_default();
                let expr = expr
                    .replace("$__rate_interval", "1m")
                    .replace("$service", ".*");
                let title = |v: &Value| v.as_str().unwrap_or_default().to_string();
                let name = format!("{}: {}", title(&doc["title"]), title(&panel["title"]));
                queries.push((name, expr));
            }
        }
    }
    assert!(queries.len() >= 20, "{queries:?}");
    queries
}

/// The `trellis_…` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<&str> {
    let ident = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("trellis_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
        found.push(&tail[..end]);
        rest = &tail[end..];
    }
    found
}

/// The sample names a `/metrics` text exposes, including those of families with no series yet.
fn exported(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

#[tokio::test]
async fn dashboards_query_only_exported_metrics_and_a_real_prometheus_answers_them() {
    let mesh = Mesh::client_and(Service::http1("hello")).await;
    let client = mesh.client("client", false);
    client.get("hello", "/").await.expect("first request");
    let mut names = std::collections::BTreeSet::new();
    for w in &mesh.workloads {
        let (_, text) = (trellis_tests::TestClient::new(w.admin, false))
            .get("localhost", "/metrics")
            .await
            .map(|(_, body)| ((), String::from_utf8_lossy(&body).into_owned()))
            .expect("metrics");
        names.extend(exported(&text));
    }
    let queries = dashboard_queries();
    for (panel, expr) in &queries {
        for m in metric_names(expr) {
            assert!(
                names.contains(m),
                "{panel} queries {m}, which the proxy does not export"
            );
        }
    }

    let Some(promtool) = require("promtool", "checks the dashboards' PromQL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let rules: Vec<Value> = (queries.iter().enumerate())
        .map(|(i, (_, expr))| serde_json::json!({ "record": format!("dashboard:q{i}"), "expr": expr }))
        .collect();
    let file = dir.path().join("rules.json");
    let doc = serde_json::json!({ "groups": [{ "name": "dashboards", "rules": rules }] });
    std::fs::write(&file, doc.to_string()).expect("rules");
    let out = tokio::process::Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
        .await
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let Some(binary) = require("prometheus", "answers the dashboards' queries") else {
        return;
    };
    let traffic = SteadyTraffic::start(client, "hello", Duration::from_millis(20));
    let targets: Vec<String> = mesh.workloads.iter().map(|w| w.admin.to_string()).collect();
    let prometheus = Prometheus::scraping(&binary, &targets).expect("prometheus starts");
    let value = |rows: &[Value], service: &str| -> Option<f64> {
        (rows.iter())
            .find(|r| {
                r["metric"]["dst_service"]
                    .as_str()
                    .is_some_and(|s| s.ends_with(service))
            })
            .and_then(|r| r["value"][1].as_str()?.parse().ok())
    };
    let query_of = |title: &str| {
        (queries.iter())
            .find(|(panel, _)| panel.ends_with(title))
            .map(|(_, e)| e.clone())
            .unwrap_or_else(|| panic!("no panel {title}"))
    };
    let rate = query_of("Request rate");
    let ready = wait_until(Duration::from_secs(30), || async {
        let rows = prometheus.query(&rate).await.unwrap_or_default();
        value(&rows, "hello").is_some_and(|v| v > 0.0)
    })
    .await;
    assert!(ready.is_ok(), "no request rate for hello from Prometheus");
    let success = prometheus
        .query(&query_of("Success rate"))
        .await
        .expect("success rate");
    assert_eq!(value(&success, "hello"), Some(1.0), "{success:?}");
    let latency = prometheus
        .query(&query_of("Latency p50 / p95 / p99"))
        .await
        .expect("latency");
    let p50 = value(&latency, "hello").unwrap_or_default();
    assert!(p50 > 0.0 && p50 < 33.0, "{latency:?}");
    // Every other panel's query evaluates (an empty answer is fine: no retries, no ejections).
    for (panel, expr) in &queries {
        assert!(prometheus.query(expr).await.is_ok(), "{panel}: {expr}");
    }
    traffic.finish().await;
}
