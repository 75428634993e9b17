//! Distributed tracing done by the sidecars alone. Topology: client → its sidecar → relay's
//! sidecar (inbound) → relay app, which copies the trace headers it received unchanged onto the
//! requests it makes → relay's sidecar (outbound) → server's sidecar → server app. The test plays
//! the relay app itself, so it controls exactly what the relay copies.

use bytes::Bytes;
use http::Request;
use std::time::Duration;
use trellis_proxy::telemetry::trace_context::{parse_traceparent, Incoming};
use trellis_tests::client::{collect, full};
use trellis_tests::mesh::wait_until;
use trellis_tests::otlp::OtlpReceiver;
use trellis_tests::{Mesh, Service, TestClient};

fn seen(rsp: &http::Response<()>, header: &str) -> Option<String> {
    rsp.headers()
        .get(format!("x-echo-h-{header}"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Every value of `header` the app received, one per field.
fn seen_all(rsp: &http::Response<()>, header: &str) -> Vec<String> {
    rsp.headers()
        .get_all(format!("x-echo-h-{header}"))
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect()
}

fn ctx(value: &str) -> Incoming {
    parse_traceparent(value.as_bytes())
        .unwrap_or_else(|| panic!("{value:?} is not a valid traceparent"))
}

async fn get(client: &TestClient, authority: &str, headers: &[(&str, &str)]) -> http::Response<()> {
    let mut req = Request::get(format!("http://{authority}/"))
        .body(full(Bytes::new()))
        .expect("request");
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    collect(client.send(req).await.expect("sent"))
        .await
        .expect("body")
        .0
}

/// client and server sidecars exporting spans to `receiver`.
async fn traced_mesh(receiver: &OtlpReceiver) -> Mesh {
    Mesh::builder()
        .telemetry(trellis_proxy::TelemetryConfig {
            otlp_endpoint: Some(receiver.endpoint()),
            ..Default::default()
        })
        .service(Service::http1("client"))
        .service(Service::http1("server"))
        .start()
        .await
        .expect("mesh starts")
}

async fn mesh() -> Mesh {
    Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::http1("relay"))
        .service(Service::http1("server"))
        .start()
        .await
        .expect("mesh starts")
}

#[tokio::test]
async fn sidecars_continue_the_trace_with_a_fresh_parent_id_per_hop_and_call() {
    let mesh = mesh().await;
    let client = mesh.client("client", false);
    let relay_out = mesh.client("relay", false);

    let original = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let rsp = get(
        &client,
        "relay",
        &[
            ("traceparent", original),
            ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ],
    )
    .await;
    let at_relay = seen(&rsp, "traceparent").expect("relay app got a traceparent");
    let relay_ctx = ctx(&at_relay);
    assert_eq!(relay_ctx.trace_id, ctx(original).trace_id, "trace id kept");
    assert_ne!(
        relay_ctx.parent_id,
        ctx(original).parent_id,
        "a fresh parent id"
    );
    assert_eq!(relay_ctx.flags & 1, 1, "sampled flag kept");
    assert_eq!(
        seen(&rsp, "tracestate").as_deref(),
        Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
    );

    // The relay makes three calls, copying its headers unchanged.
    let tracestate = seen(&rsp, "tracestate").unwrap_or_default();
    let mut parents = std::collections::HashSet::new();
    for _ in 0..3 {
        let rsp = get(
            &relay_out,
            "server",
            &[("traceparent", &at_relay), ("tracestate", &tracestate)],
        )
        .await;
        let at_server = ctx(&seen(&rsp, "traceparent").expect("server got a traceparent"));
        assert_eq!(at_server.trace_id, relay_ctx.trace_id);
        assert_ne!(
            at_server.parent_id, relay_ctx.parent_id,
            "the sidecars added their spans"
        );
        assert_eq!(
            seen(&rsp, "tracestate"),
            Some(tracestate.clone()),
            "tracestate passed on"
        );
        parents.insert(at_server.parent_id);
    }
    assert_eq!(parents.len(), 3, "three calls, three different parent ids");
}

#[tokio::test]
async fn an_invalid_or_duplicated_traceparent_starts_a_new_trace_and_drops_tracestate() {
    let mesh = mesh().await;
    let client = mesh.client("client", false);
    let bad_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![
            (
                "traceparent",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "a=1"),
        ],
        vec![
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            ),
            ("tracestate", "a=1"),
        ],
        vec![
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b8-01",
            ),
            ("tracestate", "a=1"),
        ],
    ];
    for headers in cases {
        let rsp = get(&client, "server", &headers).await;
        let at_server =
            ctx(&seen(&rsp, "traceparent").expect("a valid traceparent is always sent"));
        let mut hex = String::new();
        trellis_proxy::telemetry::trace_context::push_hex(&mut hex, &at_server.trace_id);
        assert_ne!(hex, bad_id, "a new trace for {headers:?}");
        assert_eq!(
            seen(&rsp, "tracestate"),
            None,
            "tracestate dropped for {headers:?}"
        );
    }
    // A valid traceparent with an invalid tracestate keeps the trace and drops only tracestate.
    let rsp = get(
        &client,
        "server",
        &[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            ),
            ("tracestate", "A=1,b"),
        ],
    )
    .await;
    let at_server = ctx(&seen(&rsp, "traceparent").expect("traceparent"));
    let mut hex = String::new();
    trellis_proxy::telemetry::trace_context::push_hex(&mut hex, &at_server.trace_id);
    assert_eq!(hex, bad_id);
    assert_eq!(at_server.flags & 1, 0, "not sampled stays not sampled");
    assert_eq!(seen(&rsp, "tracestate"), None);
    // x-request-id: generated when missing, kept when present.
    assert!(seen(&rsp, "x-request-id").is_some_and(|id| id.len() == 32));
    let rsp = get(&client, "server", &[("x-request-id", "my-request-1")]).await;
    assert_eq!(seen(&rsp, "x-request-id").as_deref(), Some("my-request-1"));
}

#[tokio::test]
async fn tracestate_valid_under_level_2_passes_two_sidecars_unchanged_and_keeps_valid_members() {
    let mesh = mesh().await;
    let client = mesh.client("client", false);
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    // 32 members within 512 characters, with keys only Level 2 allows next to Level 1 ones: a
    // 256-character simple key, `tenant@vendor`, a digit first, a system id over 14 characters.
    let mut members = vec![
        format!("{}=1", "k".repeat(256)),
        "tenant@vendor=t61rcWkgMzE".to_string(),
        "7digit= leading space".to_string(),
        "t@a-long-system-id=3".to_string(),
    ];
    members.extend((members.len()..32).map(|i| format!("m{i:02}=v")));
    let tracestate = members.join(",");
    assert!(tracestate.len() <= 512, "{}", tracestate.len());
    let rsp = get(
        &client,
        "server",
        &[("traceparent", parent), ("tracestate", &tracestate)],
    )
    .await;
    assert_eq!(rsp.status(), 200);
    assert_eq!(
        seen_all(&rsp, "tracestate"),
        [tracestate],
        "passed on byte for byte"
    );
    let at_server = ctx(&seen(&rsp, "traceparent").expect("traceparent"));
    assert_eq!(at_server.trace_id, ctx(parent).trace_id);

    // Invalid members and a repeated key: only they go; two fields arrive as one list.
    let rsp = get(
        &client,
        "server",
        &[
            ("traceparent", parent),
            ("tracestate", "rojo=1, Bad=2 ,congo=t61rcWkgMzE,x"),
            ("tracestate", "rojo=3,tenant@vendor=4"),
        ],
    )
    .await;
    assert_eq!(
        seen_all(&rsp, "tracestate"),
        ["rojo=1,congo=t61rcWkgMzE,tenant@vendor=4"]
    );
    let at_server = ctx(&seen(&rsp, "traceparent").expect("traceparent"));
    assert_eq!(
        at_server.trace_id,
        ctx(parent).trace_id,
        "the trace continues"
    );

    // More than 32 members: the first 32 are passed on.
    let many: Vec<String> = (0..40).map(|i| format!("k{i:02}=v")).collect();
    let rsp = get(
        &client,
        "server",
        &[("traceparent", parent), ("tracestate", &many.join(","))],
    )
    .await;
    assert_eq!(seen_all(&rsp, "tracestate"), [many[..32].join(",")]);
}

#[tokio::test]
async fn spans_of_both_sidecars_reach_an_otlp_receiver_as_one_trace() {
    let receiver = OtlpReceiver::start().await.expect("receiver");
    let mesh = traced_mesh(&receiver).await;
    let rsp = get(
        &mesh.client("client", false),
        "server",
        &[(
            "traceparent",
            "00-11111111111111111111111111111111-2222222222222222-01",
        )],
    )
    .await;
    assert_eq!(rsp.status(), 200);
    let app_saw = ctx(&seen(&rsp, "traceparent").expect("traceparent at the app"));

    wait_until(Duration::from_secs(10), || async {
        receiver.spans().len() >= 2
    })
    .await
    .expect("two spans exported");
    let spans = receiver.spans();
    let client_span = spans
        .iter()
        .find(|s| s.span.kind == 3)
        .expect("a CLIENT span");
    let server_span = spans
        .iter()
        .find(|s| s.span.kind == 2)
        .expect("a SERVER span");
    assert_eq!(client_span.span.trace_id, vec![0x11; 16]);
    assert_eq!(server_span.span.trace_id, vec![0x11; 16], "one trace");
    assert_eq!(
        client_span.span.parent_span_id,
        vec![0x22; 8],
        "the client span continues the app's context"
    );
    assert_eq!(
        server_span.span.parent_span_id, client_span.span.span_id,
        "server span's parent is the client span"
    );
    assert_eq!(
        app_saw.parent_id.to_vec(),
        server_span.span.span_id,
        "the app's parent is the server span"
    );

    assert_eq!(
        client_span.attr("http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        client_span.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        client_span.attr("server.address").as_deref(),
        Some("server")
    );
    assert_eq!(client_span.attr("http.route").as_deref(), Some("default"));
    assert_eq!(
        client_span.attr("trellis.peer.identity").as_deref(),
        Some("spiffe://trellis.local/ns/default/sa/server")
    );
    assert_eq!(
        server_span.attr("trellis.peer.identity").as_deref(),
        Some("spiffe://trellis.local/ns/default/sa/client")
    );
    assert_eq!(
        client_span.resource_attr("service.name").as_deref(),
        Some("client")
    );
    assert_eq!(
        server_span.resource_attr("service.name").as_deref(),
        Some("server")
    );
    assert_eq!(
        server_span.resource_attr("k8s.namespace.name").as_deref(),
        Some("default")
    );
    assert!(server_span.resource_attr("trellis.proxy.version").is_some());
    assert!(client_span.span.end_time_unix_nano >= client_span.span.start_time_unix_nano);
}

#[tokio::test]
async fn failed_requests_are_marked_as_errors_in_their_spans() {
    let receiver = OtlpReceiver::start().await.expect("receiver");
    let mesh = traced_mesh(&receiver).await;
    mesh.workload("server").app.always(503);
    let rsp = get(&mesh.client("client", false), "server", &[]).await;
    assert_eq!(rsp.status(), 503);
    wait_until(Duration::from_secs(10), || async {
        receiver.spans().len() >= 2
    })
    .await
    .expect("spans exported");
    for s in receiver.spans() {
        assert_eq!(
            s.span.status.as_ref().map(|st| st.code),
            Some(2),
            "status ERROR on {:?}",
            s.span.name
        );
        assert_eq!(s.attr("error.type").as_deref(), Some("503"));
    }
}
