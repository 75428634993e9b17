//! Authorization policy end to end: each rule kind with the caller it admits and the one it
//! refuses, deny beating allow, default deny, the 403 and its reason, and the counters in /stats.

use bytes::Bytes;
use http::{Method, Request};
use trellis_tests::client::{collect, full};
use trellis_tests::{Mesh, Service};

const POLICY: &str = "\
authorization:
  default: deny
  rules:
    - name: deny-admin
      action: deny
      to: {paths: [{prefix: /admin}]}
    - name: client-get
      action: allow
      from: {identities: [\"spiffe://trellis.local/ns/default/sa/client\"]}
      to: {methods: [GET], ports: [80]}
    - name: other-health
      action: allow
      from: {identities: [\"spiffe://trellis.local/ns/default/sa/oth*\"]}
      to: {paths: [{exact: /health}], headers: [{name: x-team, exact: blue}]}
    - name: namespace-put
      action: allow
      from: {namespaces: [default]}
      to: {methods: [PUT]}
";

async fn call(
    mesh: &Mesh,
    from: &str,
    method: Method,
    path: &str,
    header: Option<(&str, &str)>,
) -> (u16, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://hello{path}"));
    if let Some((k, v)) = header {
        req = req.header(k, v);
    }
    let req = req.body(full(Bytes::new())).expect("request");
    let rsp = mesh.client(from, false).send(req).await.expect("sent");
    let (rsp, _) = collect(rsp).await.expect("body");
    let reason = rsp
        .headers()
        .get("trellis-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (rsp.status().as_u16(), reason)
}

#[tokio::test]
async fn each_rule_kind_admits_and_refuses() {
    let mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::http1("other"))
        .service(Service::http1("hello").yaml(POLICY))
        .start()
        .await
        .expect("mesh starts");

    // Exact identity + method.
    assert_eq!(call(&mesh, "client", Method::GET, "/x", None).await.0, 200);
    let (status, reason) = call(&mesh, "client", Method::POST, "/x", None).await;
    assert_eq!(status, 403);
    assert!(reason.contains("\"default\""), "{reason}");
    // Deny beats allow: client-get matches too.
    let (status, reason) = call(&mesh, "client", Method::GET, "/admin/users", None).await;
    assert_eq!(status, 403);
    assert!(reason.contains("deny-admin"), "{reason}");
    // Identity prefix + exact path + header.
    let blue = Some(("x-team", "blue"));
    assert_eq!(
        call(&mesh, "other", Method::GET, "/health", blue).await.0,
        200
    );
    assert_eq!(
        call(&mesh, "other", Method::GET, "/health", None).await.0,
        403
    );
    let red = Some(("x-team", "red"));
    assert_eq!(
        call(&mesh, "other", Method::GET, "/health", red).await.0,
        403
    );
    assert_eq!(
        call(&mesh, "other", Method::GET, "/healthz", blue).await.0,
        403
    );
    assert_eq!(call(&mesh, "other", Method::GET, "/x", None).await.0, 403);
    // Namespace.
    assert_eq!(call(&mesh, "other", Method::PUT, "/x", None).await.0, 200);

    let hello = (mesh.workloads.iter())
        .position(|w| w.service == "hello")
        .expect("hello");
    let (_, stats) = mesh.admin_get(hello, "/stats").await.expect("stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("json");
    let authz = &stats["authorization"];
    assert!(
        authz["client-get"]["allowed"].as_u64() >= Some(1),
        "{authz}"
    );
    assert!(authz["deny-admin"]["denied"].as_u64() >= Some(1), "{authz}");
    assert!(authz["default"]["denied"].as_u64() >= Some(3), "{authz}");
    assert!(
        authz["namespace-put"]["allowed"].as_u64() >= Some(1),
        "{authz}"
    );
}

#[tokio::test]
async fn default_deny_without_rules_refuses_everything_and_updates_apply() {
    let mut mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::http1("hello").yaml("authorization: {default: deny}"))
        .start()
        .await
        .expect("mesh starts");
    for method in [Method::GET, Method::POST, Method::DELETE] {
        let (status, reason) = call(&mesh, "client", method, "/", None).await;
        assert_eq!(status, 403);
        assert!(reason.contains("default"), "{reason}");
    }
    // Lifting the policy applies to the next request, on the same connections.
    let hello = (mesh.services.iter_mut())
        .find(|s| s.name == "hello")
        .expect("hello");
    hello.extra_yaml.clear();
    mesh.write_config().expect("config");
    trellis_tests::mesh::wait_until(std::time::Duration::from_secs(10), || async {
        call(&mesh, "client", Method::GET, "/", None).await.0 == 200
    })
    .await
    .expect("policy lifted");
}

#[test]
fn bad_policies_are_refused_with_their_position() {
    let text = "\
services:
  - name: web
    ports: [{port: 80}]
    authorization:
      rules:
        - name: r
          action: allow
          from: {identities: [\"web\"]}
";
    let err = trellis_control_plane::config::parse("mesh.yaml", text)
        .map(|_| ())
        .expect_err("refused");
    let text_err = err.to_string();
    assert!(
        text_err.starts_with("mesh.yaml:8:")
            && text_err.contains("services[0].authorization.rules[0].from.identities[0]"),
        "{text_err}"
    );
    let text = "\
services:
  - name: web
    ports: [{port: 80}]
    authorization:
      rules:
        - name: r
          action: allow
          to: {ports: [8080]}
";
    let err = trellis_control_plane::config::parse("mesh.yaml", text)
        .map(|_| ())
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("rules[0].to.ports[0]: 8080 is not one of this service's ports"),
        "{err}"
    );
}
