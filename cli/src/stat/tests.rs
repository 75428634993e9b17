use super::*;

const SCRAPE: &str = r#"# HELP trellis_requests Requests answered.
# TYPE trellis_requests counter
trellis_requests_total{direction="outbound",dst_service="default/hello",route="api",status_class="2xx",peer_identity="spiffe://t/ns/default/sa/hello"} 90
trellis_requests_total{direction="outbound",dst_service="default/hello",route="api",status_class="5xx",peer_identity="spiffe://t/ns/default/sa/hello"} 10
trellis_requests_total{direction="inbound",dst_service="default/frontend",route="inbound",status_class="2xx",peer_identity="x"} 7
trellis_request_duration_seconds_bucket{direction="outbound",dst_service="default/hello",route="api",le="0.001"} 50
trellis_request_duration_seconds_bucket{direction="outbound",dst_service="default/hello",route="api",le="0.002"} 90
trellis_request_duration_seconds_bucket{direction="outbound",dst_service="default/hello",route="api",le="0.004"} 100
trellis_request_duration_seconds_bucket{direction="outbound",dst_service="default/hello",route="api",le="+Inf"} 100
trellis_request_duration_seconds_sum{direction="outbound",dst_service="default/hello",route="api"} 0.12
trellis_control_plane_connected 1
"#;

#[test]
fn parses_samples_with_labels_and_escapes() {
    let samples = parse(SCRAPE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(samples.len(), 9);
    assert_eq!(samples[0].label("route"), Some("api"));
    assert_eq!(samples[0].value, 90.0);
    assert_eq!(samples[8].name, "trellis_control_plane_connected");
    let odd = parse(r#"m{a="x\"y,}z",b="2"} 3"#).unwrap_or_default();
    assert_eq!(odd[0].label("a"), Some("x\"y,}z"));
    assert_eq!(odd[0].label("b"), Some("2"));
    assert!(parse("m{a=\"1\"").is_err());
}

#[test]
fn quantiles_interpolate_inside_the_bucket_like_prometheus() {
    let buckets: BTreeMap<Bound, f64> = [
        (0.001, 50.0),
        (0.002, 90.0),
        (0.004, 100.0),
        (f64::INFINITY, 100.0),
    ]
    .into_iter()
    .map(|(le, c)| (Bound(le), c))
    .collect();
    // Rank 50 is the top of the first bucket; rank 95 is half way into (0.002, 0.004].
    assert_eq!(quantile(0.5, &buckets), Some(0.001));
    assert_eq!(quantile(0.95, &buckets).map(|v| round(v, 6)), Some(0.003));
    assert_eq!(quantile(0.99, &buckets).map(|v| round(v, 6)), Some(0.0038));
    assert_eq!(quantile(0.5, &BTreeMap::new()), None);
}

#[test]
fn rows_give_rate_success_and_latency_over_the_window() {
    let mut before = Signals::default();
    let key = ("default/hello".to_string(), String::new());
    before.0.insert(
        key.clone(),
        Signal {
            requests: 40.0,
            successes: 40.0,
            buckets: [
                (Bound(0.001), 40.0),
                (Bound(0.002), 40.0),
                (Bound(f64::INFINITY), 40.0),
            ]
            .into_iter()
            .collect(),
        },
    );
    let mut after = Signals::default();
    after.0.insert(
        key,
        Signal {
            requests: 100.0,
            successes: 90.0,
            buckets: [
                (Bound(0.001), 70.0),
                (Bound(0.002), 100.0),
                (Bound(f64::INFINITY), 100.0),
            ]
            .into_iter()
            .collect(),
        },
    );
    let rows = after.since(&before).rows(Some(2.0));
    assert_eq!(rows[0]["requests"], 60.0);
    assert_eq!(rows[0]["rps"], 30.0);
    assert_eq!(rows[0]["successRate"], 0.8333);
    // 30 of 60 in the window were under 1 ms.
    assert_eq!(rows[0]["latencyMs"]["p50"], 1.0);
    let text = table(&rows, By::Service);
    assert!(text.contains("default/hello"), "{text}");
    assert!(text.contains("60     30.0   83.33%     1.0ms"), "{text}");
}

#[test]
fn windows_read_like_the_mesh_yaml() {
    assert_eq!(parse_window("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_window("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_window("0"), Ok(Duration::ZERO));
    assert!(parse_window("soon").is_err());
}

#[test]
fn sidecars_come_from_the_control_planes_list_by_namespace() {
    let doc = r#"{"proxies": [
        {"nodeId": "web-1", "namespace": "shop", "adminAddress": "10.0.0.2:4191"},
        {"nodeId": "api-1", "namespace": "shop", "adminAddress": ""},
        {"nodeId": "db-1", "namespace": "data", "adminAddress": "10.0.0.4:4191"}
    ]}"#;
    let all = listed_sidecars(doc, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all, ["10.0.0.2:4191", "10.0.0.4:4191"], "no empty address");
    let shop = listed_sidecars(doc, Some("shop")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(shop, ["10.0.0.2:4191"]);
    let wrong = listed_sidecars(r#"{"status": {}}"#, None).unwrap_err();
    assert!(
        format!("{wrong}").contains("no \"proxies\" list"),
        "{wrong}"
    );
    assert!(listed_sidecars("<html>", None).is_err());
}
