//! App probes of an injected pod under strict mTLS, end to end in network namespaces (root
//! only): the pod namespace has the redirect rules, a strict-mTLS app (HTTP on 8080, a TCP
//! port, a gRPC health server) and the sidecar as uid 2102 with `TRELLIS_APP_PROBES` exactly as
//! `trellis-injector inject` writes it for the pod's manifest; a plaintext "kubelet" client
//! probes from another namespace, as the kubelet does from the node. The test checks that the
//! kubelet's original plaintext probe of the app port is refused (the problem), and that the
//! rewritten probes on the admin port pass and fail with the app: HTTP 200 and 500, TCP open and
//! closed, gRPC SERVING and NOT_SERVING, and 404 for a path the injector did not configure.
//! Topology and clean-up: `netns/lab.rs` (pod A is the pod, C the control plane and the node).
//!
//! Without root or the tools it prints SKIPPED; under CI (`CI` set) it fails instead.

// The lab serves netns.rs too; this test uses only pod A and C.
#[path = "netns/lab.rs"]
mod lab;

use lab::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Pod A's address on its link to C: where the "kubelet" in C reaches the pod.
const A_FROM_C: &str = "10.231.1.2";
/// The env var that makes this test binary the gRPC health server (see `grpc_health_helper`).
const HELPER_ENV: &str = "TRELLIS_TEST_GRPC_HEALTH_PORT";

/// The pod as its owner wrote it: probes on the app's ports, one by name.
const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: shop
  namespace: default
  labels: {app: shop}
spec:
  serviceAccountName: shop
  containers:
    - name: app
      image: example/shop:1
      ports:
        - {name: http, containerPort: 8080}
        - {name: db, containerPort: 5432}
      readinessProbe:
        httpGet: {path: /healthz, port: http}
        periodSeconds: 5
      livenessProbe:
        httpGet: {path: /broken, port: http}
      startupProbe:
        tcpSocket: {port: db}
        timeoutSeconds: 2
    - name: grpc
      image: example/grpc:1
      readinessProbe:
        grpc: {port: 9090}
      livenessProbe:
        grpc: {port: 9090, service: down}
";

fn mesh_yaml() -> String {
    format!(
        "trustDomain: trellis.local
services:
  - name: shop
    serviceAccount: shop
    mtls: strict
    ports: [{{port: 8080, targetPort: 8080, protocol: http1}}]
    endpoints: [{{address: \"{A_POD}:8080\"}}]
"
    )
}

/// 200 on /healthz, 500 elsewhere; logs the caller's address and the request line.
const HTTP_APP: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if self.path == '/healthz' else 500
        self.send_response(code); self.send_header('Content-Length', '2'); self.end_headers()
        self.wfile.write(b'ok')
    def log_message(self, fmt, *args):
        sys.stderr.write('seen %s %s\n' % (self.client_address[0], fmt % args)); sys.stderr.flush()
http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever()
"#;

const TCP_APP: &str = r#"
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 5432)); s.listen(8)
while True:
    c, a = s.accept(); c.close()
"#;

#[test]
fn rewritten_probes_pass_strict_mtls_in_network_namespaces() {
    if !can_run("rewritten_probes_pass_strict_mtls_in_network_namespaces") {
        return;
    }
    // What the injector makes of the pod: the rewritten probe paths and the proxy's env var.
    let (paths, app_probes) = inject(POD);
    assert_eq!(
        paths,
        [
            "/app-health/app/livez",
            "/app-health/app/readyz",
            "/app-health/app/startupz",
            "/app-health/grpc/livez",
            "/app-health/grpc/readyz"
        ]
    );

    let mut lab = Lab::new();
    let [a, _b, c] = lab.ns.clone();

    let cp = lab.start_control_plane(&mesh_yaml());

    // The pod's containers: the HTTP app and its TCP port, and the gRPC health server.
    let mut http_app = lab.cmd(&a, "python3");
    http_app.args(["-u", "-c", HTTP_APP]);
    lab.spawn("http-app", http_app);
    let mut tcp_app = lab.cmd(&a, "python3");
    tcp_app.args(["-u", "-c", TCP_APP]);
    lab.spawn("tcp-app", tcp_app);
    let mut grpc_app = lab.cmd(&a, std::env::current_exe().expect("test binary"));
    grpc_app
        .args(["--exact", "grpc_health_helper", "--ignored", "--nocapture"])
        .env(HELPER_ENV, "9090");
    lab.spawn("grpc-app", grpc_app);

    // The init step and the sidecar, configured as the injector configures it.
    lab.redirect(&a, &[]);
    let mut proxy = lab.sidecar(&cp, (&a, "shop", C_FOR_A), &INJECTED, &[]);
    proxy.env("TRELLIS_APP_PROBES", &app_probes);
    lab.spawn("proxy", proxy);
    lab.wait_ready(&a);
    let healthy =
        "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/healthz', timeout=1)";
    lab.wait_for(
        "the app (from inside the pod)",
        Duration::from_secs(10),
        || lab.python(&a, healthy).status.success(),
    );
    let grpc_up = "import socket; socket.create_connection(('127.0.0.1', 9090), timeout=1)";
    lab.wait_for("the gRPC health server", Duration::from_secs(10), || {
        lab.python(&a, grpc_up).status.success()
    });

    // (a) The kubelet's original probe: plaintext to the app port, captured by the redirect and
    //     refused by the strict inbound listener. The app never sees it.
    let marker = format!("/healthz-direct-{}", std::process::id());
    let direct = format!(
        "import urllib.request as u\n\
         try: print('status', u.urlopen('http://{A_FROM_C}:8080{marker}', timeout=5).status)\n\
         except Exception as x: print('refused', type(x).__name__)"
    );
    let said = expect_ok(&lab, &c, &direct, "the direct plaintext probe");
    assert!(
        said.starts_with("refused"),
        "strict mTLS must refuse it: {said}\n{}",
        lab.logs()
    );
    let app_log = std::fs::read_to_string(lab.log_path("http-app")).unwrap_or_default();
    assert!(
        !app_log.contains(&marker),
        "the app saw the plaintext probe:\n{app_log}"
    );

    // (b, c, e, f) The rewritten probes, from the "kubelet" in C on the admin port.
    let answers = kubelet(
        &lab,
        &c,
        &[
            "/app-health/app/readyz",
            "/app-health/app/livez",
            "/app-health/app/startupz",
            "/app-health/grpc/readyz",
            "/app-health/grpc/livez",
            "/app-health/nope/readyz",
        ],
    );
    let status = |i: usize| {
        answers[i]
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(
        status(0),
        "200",
        "HTTP /healthz passes: {answers:?}\n{}",
        lab.logs()
    );
    assert_eq!(status(1), "503", "HTTP /broken (500) fails: {answers:?}");
    assert!(
        answers[1].contains("500"),
        "the reason names the app's status: {answers:?}"
    );
    assert_eq!(status(2), "200", "the TCP port is open: {answers:?}");
    assert_eq!(
        status(3),
        "200",
        "gRPC SERVING: {answers:?}\n{}",
        lab.logs()
    );
    assert_eq!(status(4), "503", "gRPC NOT_SERVING: {answers:?}");
    assert!(answers[4].contains("NOT_SERVING"), "{answers:?}");
    assert_eq!(
        status(5),
        "404",
        "an unconfigured path is not probed: {answers:?}"
    );

    // The sidecar performed the original HTTP probes against the app from inside the pod.
    let app_log = std::fs::read_to_string(lab.log_path("http-app")).unwrap_or_default();
    assert!(
        app_log.contains("seen 127.0.0.1 \"GET /healthz HTTP/1.1\" 200"),
        "{app_log}"
    );
    assert!(
        app_log.contains("seen 127.0.0.1 \"GET /broken HTTP/1.1\" 500"),
        "{app_log}"
    );

    // (d) The TCP probe follows the listener: stopped, the probe fails.
    lab.interrupt("tcp-app");
    let closed = "import socket\n\
         try: socket.create_connection(('127.0.0.1', 5432), timeout=1); print('open')\n\
         except OSError: print('closed')";
    lab.wait_for("the TCP app to stop", Duration::from_secs(10), || {
        expect_ok(&lab, &a, closed, "the TCP check").trim() == "closed"
    });
    let answers = kubelet(&lab, &c, &["/app-health/app/startupz"]);
    assert!(
        answers[0].starts_with("/app-health/app/startupz 503"),
        "{answers:?}"
    );
}

/// GETs each admin path of the pod from `ns` (the "kubelet"): one `path status [reason]` line
/// each.
fn kubelet(lab: &Lab, ns: &str, paths: &[&str]) -> Vec<String> {
    let list = paths
        .iter()
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let code = format!(
        "import urllib.request as u, urllib.error as e\n\
         for p in [{list}]:\n\
         \x20   try: print(p, u.urlopen('http://{A_FROM_C}:4191' + p, timeout=10).status)\n\
         \x20   except e.HTTPError as x: print(p, x.code, x.read().decode().strip())"
    );
    let out = expect_ok(lab, ns, &code, "the kubelet's probes");
    out.lines().map(str::to_owned).collect()
}

/// Runs `trellis injector inject` on `pod` and returns the admin paths its app probes now use
/// (sorted) and the proxy's `TRELLIS_APP_PROBES` value.
fn inject(pod: &str) -> (Vec<String>, String) {
    let mut child = Command::new(BIN)
        .args(["injector", "inject", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{BIN}: {e}"));
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(pod.as_bytes()).expect("write the pod");
    }
    let out = child.wait_with_output().expect("trellis injector");
    let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "inject failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut paths: Vec<String> = yaml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("path: "))
        .filter(|p| p.starts_with("/app-health/"))
        .map(str::to_owned)
        .collect();
    paths.sort();
    // The env var's value is a double-quoted YAML scalar; with only `\"` escapes in it, it is
    // also a JSON string.
    let lines: Vec<&str> = yaml.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim() == "- name: TRELLIS_APP_PROBES")
        .unwrap_or_else(|| panic!("no TRELLIS_APP_PROBES in:\n{yaml}"));
    let quoted = lines[at + 1]
        .trim()
        .strip_prefix("value: ")
        .unwrap_or_else(|| panic!("no value after TRELLIS_APP_PROBES:\n{yaml}"));
    let value: String = serde_json::from_str(quoted).expect("a quoted JSON string");
    let json: serde_json::Value = serde_json::from_str(&value).expect("JSON");
    assert_eq!(
        json["/app-health/app/readyz"]["httpGet"]["port"], 8080,
        "{json}"
    );
    (paths, value)
}

/// Runs Python in `ns` and returns its stdout, failing with the logs if it fails.
fn expect_ok(lab: &Lab, ns: &str, code: &str, what: &str) -> String {
    let out = lab.python(ns, code);
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        lab.logs()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Not a test: the pod's gRPC container. The test above runs this binary again inside the pod's
/// namespace with `--ignored --exact grpc_health_helper` and the port in `HELPER_ENV`; it serves
/// `grpc.health.v1.Health/Check` over h2c (service "" SERVING, "down" NOT_SERVING) until killed.
#[test]
#[ignore = "run by rewritten_probes_pass_strict_mtls_in_network_namespaces"]
fn grpc_health_helper() {
    let Some(port) = std::env::var(HELPER_ENV)
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
    else {
        panic!("{HELPER_ENV} is not set: this helper is started by the netns probe test");
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .expect("bind");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(health_check);
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
            });
        }
    });
}

type HealthBody = http_body_util::combinators::WithTrailers<
    http_body_util::Full<bytes::Bytes>,
    std::future::Ready<Option<Result<http::HeaderMap, std::convert::Infallible>>>,
>;

async fn health_check(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<HealthBody>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    let path_ok = req.uri().path() == "/grpc.health.v1.Health/Check";
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // Frame (5 bytes), then field 1 (tag, length, service name) when the service is not "".
    let service = body
        .get(7..)
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let status: u8 = if service == "down" { 2 } else { 1 };
    let mut trailers = http::HeaderMap::new();
    let code = if path_ok { "0" } else { "12" };
    trailers.insert("grpc-status", http::HeaderValue::from_static(code));
    let frame = bytes::Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]);
    let body =
        http_body_util::Full::new(frame).with_trailers(std::future::ready(Some(Ok(trailers))));
    let mut rsp = http::Response::new(body);
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    Ok(rsp)
}
