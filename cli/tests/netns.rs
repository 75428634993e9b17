//! Transparent interception end to end, in network namespaces (root only): two "pods", each with
//! its apps, `trellis proxy redirect` applied and the sidecar running as uid 2102 in transparent
//! mode; the control plane in a third namespace (see `netns/lab.rs` for the topology and why).
//! Apps in pod A connect to pod B's IP as if there were no mesh, and the test checks that:
//! HTTP is captured, crosses the pod link only inside mTLS (a tcpdump capture of that link holds
//! none of the plaintext markers), reaches B's app with the caller's verified identity in
//! `trellis-client-id`, and is answered; a server-speaks-first TCP service and a TLS app work
//! through the mesh; a destination outside the mesh passes through; the outbound listener
//! refuses a connection addressed to itself; a plaintext TCP client outside the mesh reaches a
//! permissive workload's TCP service; the admin port, bound on every address as in a pod, answers
//! probes and scrapes from outside the pod but diagnostics, log level and shutdown only inside;
//! a service's virtual address (a ClusterIP) is resolved to the service, for HTTP and opaque TCP;
//! discovery is on demand: alpha's sidecar holds beta's config only once its app called beta.
//!
//! Without root or the tools it prints SKIPPED; under CI (`CI` set) it fails instead.

#[path = "netns/lab.rs"]
mod lab;

use lab::*;
use std::time::Duration;

/// Beta's virtual address, as a Kubernetes ClusterIP: no interface has it, A's namespace only
/// routes it towards B, so the only way a connection to it reaches beta is through the sidecar.
const BETA_VIP: &str = "10.231.9.9";

fn mesh_yaml() -> String {
    format!(
        "trustDomain: trellis.local
services:
  - name: alpha
    serviceAccount: alpha
    ports: [{{port: 8080, targetPort: 8080, protocol: http1}}]
    endpoints: [{{address: \"{A_POD}:8080\"}}]
  - name: beta
    serviceAccount: beta
    mtls: permissive
    ports:
      - {{port: 8080, targetPort: 8080, protocol: http1}}
      - {{port: 80, targetPort: 8080, protocol: http1}}
      - {{port: 25, targetPort: 2525}}
    addresses: [\"{BETA_VIP}\"]
    endpoints: [{{address: \"{B_POD}:8080\"}}]
"
    )
}

const TLS_SERVER: &str = r#"
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[1], sys.argv[2])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 8443)); s.listen(8)
while True:
    c, a = s.accept()
    try:
        t = ctx.wrap_socket(c, server_side=True)
        t.sendall(b'tls says ' + t.makefile('rb').readline()); t.close()
    except Exception as e:
        print('tls server:', e, flush=True)
"#;

const OUTSIDE_SERVER: &str = r#"
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 9090)); s.listen(8)
while True:
    c, a = s.accept()
    line = c.makefile('rb').readline().decode().strip()
    c.sendall(('outside got %s from %s\n' % (line, a[0])).encode()); c.close()
"#;

#[test]
fn transparent_interception_in_network_namespaces() {
    if !can_run("transparent_interception_in_network_namespaces") {
        return;
    }
    let mut lab = Lab::new();
    let [a, b, c] = lab.ns.clone();
    let marker = format!("plaintext-marker-{}", std::process::id());

    let cp = lab.start_control_plane(&mesh_yaml());
    let shared = lab.shared_dir();

    // A TLS server certificate for B's TLS app.
    let tls = rcgen::generate_simple_self_signed(vec!["tls.test".to_string()]).expect("rcgen");
    let (cert, key) = (shared.join("tls.pem"), shared.join("tls.key"));
    std::fs::write(&cert, tls.cert.pem()).expect("cert");
    std::fs::write(&key, tls.signing_key.serialize_pem()).expect("key");

    // The apps: sample apps in both pods, a banner (server-speaks-first) and a TLS server in B,
    // and a server outside the mesh in C.
    for (ns, name) in [(&a, "alpha"), (&b, "beta")] {
        let mut app = lab.cmd(ns, BIN);
        app.args(["sample-app", "--name", name, "--listen", "0.0.0.0:8080"]);
        lab.spawn(&format!("{name}-app"), app);
    }
    let mut banner = lab.cmd(&b, "python3");
    banner.args(["-u", "-c", &banner_server("beta smtp ready")]);
    lab.spawn("beta-banner", banner);
    let mut tls_app = lab.cmd(&b, "python3");
    tls_app.args(["-u", "-c", TLS_SERVER]).arg(&cert).arg(&key);
    lab.spawn("beta-tls", tls_app);
    let mut outside = lab.cmd(&c, "python3");
    outside.args(["-u", "-c", OUTSIDE_SERVER]);
    lab.spawn("outside", outside);

    // A route for the virtual addresses (as a node has for its ClusterIP range): without one,
    // connect() fails before the redirect can see the connection.
    lab.add_route(&a, "ab", "10.231.9.0/24");

    // The init step and the sidecars, as the injector configures them (the admin port on every
    // address: kubelet probes come from the node).
    for (ns, name, control_plane) in [(&a, "alpha", C_FOR_A), (&b, "beta", C_FOR_B)] {
        lab.redirect(ns, &[]);
        let proxy = lab.sidecar(&cp, (ns, name, control_plane), &INJECTED, &[]);
        lab.spawn(&format!("{name}-proxy"), proxy);
    }
    lab.wait_ready(&a);
    lab.wait_ready(&b);

    // On demand, in transparent mode too: alpha's sidecar holds every service's addresses, and
    // no service's routes, clusters or endpoints until its app calls one.
    let before = discovery_state(&lab, &a);
    assert_eq!(before["mode"], "on-demand", "{before}");
    assert_eq!(before["byAddress"], true, "{before}");
    assert_eq!(before["services"], serde_json::json!({}), "{before}");

    // Capture the pod-to-pod link while the apps talk.
    let pcap = lab.path("pod-link.pcap");
    let mut tcpdump = lab.cmd(&a, "tcpdump");
    tcpdump
        .args(["-i", &lab.veth("ab"), "-U", "-s", "0", "-Z", "root", "-w"])
        .arg(&pcap);
    lab.spawn("tcpdump", tcpdump);
    std::thread::sleep(Duration::from_millis(500));

    // 1. HTTP to B's IP and app port, as if there were no mesh.
    let url = format!("http://{B_POD}:8080/{marker}");
    expect_beta_served(&lab, &a, &url, &marker, "HTTP from A to B");

    // 1b. The Host names no service in the mesh: the control plane is asked once (it could be
    //     a service alpha's sidecar does not hold yet), then the pod address the app connected
    //     to decides, as with every service held.
    let get = format!(
        "import urllib.request as u, sys\n\
         r = u.Request('{url}-nosuch', headers={{'Host': 'nosuch:8080'}})\n\
         sys.stdout.write(u.urlopen(r, timeout=10).read().decode())"
    );
    let seen = expect_ok(&lab, &a, &get, "HTTP to B with a Host naming no service");
    assert!(seen.contains("\"service\":\"beta\""), "{seen}");
    assert!(seen.contains(&format!("{marker}-nosuch")), "{seen}");

    // 2. Server-speaks-first TCP: nothing to detect until the detection timeout, then opaque.
    expect_banner(&lab, &a, (B_POD, 2525), &marker, "the banner service");

    // 3. A TLS app: the ClientHello is passed through untouched (the app verifies B's cert).
    let tls_client = format!(
        "import socket, ssl\n\
         ctx = ssl.create_default_context(cafile='{}')\n\
         s = ctx.wrap_socket(socket.create_connection(('{B_POD}', 8443), timeout=10), server_hostname='tls.test')\n\
         s.sendall(b'hello {marker}\\n'); print(s.makefile('rb').readline().decode().strip())",
        cert.display()
    );
    let said = expect_ok(&lab, &a, &tls_client, "the TLS app");
    assert_eq!(said.trim(), format!("tls says hello {marker}"));

    // 4. Outside the mesh: plain TCP to the original destination.
    let out = format!(
        "import socket\n\
         s = socket.create_connection(('{C_FOR_A}', 9090), timeout=10)\n\
         s.sendall(b'ping {marker}\\n'); print(s.makefile('rb').readline().decode().strip())"
    );
    let said = expect_ok(&lab, &a, &out, "the destination outside the mesh");
    assert_eq!(
        said.trim(),
        format!("outside got ping {marker} from 10.231.1.2")
    );

    // 5. No loops: a connection addressed to the outbound listener itself is refused.
    let direct = "import socket\n\
         s = socket.create_connection(('127.0.0.1', 4140), timeout=5)\n\
         s.sendall(b'GET / HTTP/1.1\\r\\nHost: beta\\r\\n\\r\\n')\n\
         try: print(repr(s.recv(100)))\n\
         except ConnectionResetError: print('reset')";
    let said = expect_ok(&lab, &a, direct, "the loop check");
    // Closed without an answer: a FIN, or a RST when the request was already in the socket's
    // receive buffer as the proxy closed it (which of the two is a race).
    assert!(
        matches!(said.trim(), "b''" | "reset"),
        "closed without an answer, got {said:?}"
    );

    // 6. B is permissive: a plaintext client outside the mesh (in C) reaches B's TCP service,
    //    detected as not HTTP by B's inbound listener and carried to the app as opaque TCP.
    let plaintext = format!(
        "import socket\n\
         s = socket.create_connection(('{B_FROM_C}', 2525), timeout=10); f = s.makefile('rb')\n\
         s.sendall(b'HELO outside\\r\\n')\n\
         print(f.readline().decode().strip()); print(f.readline().decode().strip())"
    );
    let said = expect_ok(&lab, &c, &plaintext, "plaintext TCP into permissive B");
    assert!(said.contains("250 got HELO outside"), "{said}");

    // 7. The admin port from outside the pod (C, no identity): probes and scrapes answer;
    //    diagnostics, the log level and shutdown do not. From inside B they all do.
    let admin = String::from(
        "import urllib.request as u, urllib.error as e\n\
         for method, path in [('GET','/ready'),('GET','/metrics'),('GET','/config'),('GET','/stats'),\
                              ('GET','/explain'),('GET','/tap'),('PUT','/log-level'),('POST','/shutdown')]:\n\
         \x20   r = u.Request('http://{host}:4191' + path, method=method, data=b'' if method != 'GET' else None)\n\
         \x20   try: print(path, u.urlopen(r, timeout=5).status)\n\
         \x20   except e.HTTPError as x: print(path, x.code)"
    );
    let from_outside = expect_ok(
        &lab,
        &c,
        &admin.replace("{host}", B_FROM_C),
        "the admin port from outside the pod",
    );
    assert_eq!(
        from_outside.lines().collect::<Vec<_>>(),
        [
            "/ready 200",
            "/metrics 200",
            "/config 403",
            "/stats 403",
            "/explain 403",
            "/tap 403",
            "/log-level 403",
            "/shutdown 403"
        ],
        "{from_outside}"
    );
    let inside = admin
        .replace("{host}", "127.0.0.1")
        .replace(",('POST','/shutdown')", "")
        .replace(",('GET','/explain'),('GET','/tap')", "");
    let from_inside = expect_ok(&lab, &b, &inside, "the admin port from inside the pod");
    assert_eq!(
        from_inside.lines().collect::<Vec<_>>(),
        [
            "/ready 200",
            "/metrics 200",
            "/config 200",
            "/stats 200",
            "/log-level 400"
        ],
        "an empty filter is refused as a bad request, not as forbidden: {from_inside}"
    );

    // 8. Beta's virtual address (a ClusterIP) on a service port: HTTP is routed to beta's
    //    cluster over mTLS (port 80 -> target port 8080), with A's identity proven to B.
    let url = format!("http://{BETA_VIP}:80/{marker}-vip");
    let what = "HTTP from A to beta's virtual address";
    expect_beta_served(&lab, &a, &url, &format!("{marker}-vip"), what);

    // 9. Opaque TCP to the virtual address: port 25 -> the banner service's target port 2525,
    //    over mTLS to beta's endpoint.
    let what = "the banner service at beta's virtual address";
    expect_banner(&lab, &a, (BETA_VIP, 25), &format!("{marker}-vip"), what);

    // Every call above went to beta, placed by its addresses: beta is held, and the name
    // asked for in 1b is known to be no service.
    let after = discovery_state(&lab, &a);
    let held: Vec<&String> = after["services"]
        .as_object()
        .expect("services")
        .keys()
        .collect();
    assert_eq!(held, ["default/beta", "default/nosuch"], "{after}");
    assert_eq!(
        after["unknownServices"],
        serde_json::json!(["default/nosuch"]),
        "{after}"
    );
    assert_eq!(
        after["subscriptions"]["trellis.config.v1.RouteConfig"],
        serde_json::json!(["default/beta", "default/nosuch"]),
        "{after}"
    );

    lab.interrupt("tcpdump");
    let captured = std::fs::read(&pcap).expect("the capture");
    assert!(
        captured.len() > 2000,
        "the capture holds the traffic ({} bytes)",
        captured.len()
    );
    let plain = |needle: &str| {
        captured
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    };
    for needle in [marker.as_str(), "beta smtp ready", "\"service\""] {
        assert!(
            !plain(needle),
            "{needle:?} crossed the pod link in plaintext"
        );
    }
    let log = std::fs::read_to_string(lab.log_path("alpha-proxy")).unwrap_or_default();
    assert!(
        log.contains("to the proxy's own listener refused"),
        "{}",
        lab.logs()
    );
}

/// GET `url` from `ns`: beta's app answers, with `marker` in the path it saw and alpha's
/// verified identity as the caller (so the request crossed mTLS).
fn expect_beta_served(lab: &Lab, ns: &str, url: &str, marker: &str, what: &str) {
    let get = format!(
        "import urllib.request as u, sys\n\
         sys.stdout.write(u.urlopen('{url}', timeout=10).read().decode())"
    );
    let seen = expect_ok(lab, ns, &get, what);
    assert!(seen.contains("\"service\":\"beta\""), "{seen}");
    assert!(seen.contains(marker), "{seen}");
    assert!(
        seen.contains("\"caller\":\"spiffe://trellis.local/ns/default/sa/alpha\""),
        "{what}: beta must see alpha's verified identity: {seen}\n{}",
        lab.logs()
    );
}

/// A conversation from `ns` with beta's banner (server-speaks-first) service at `to`.
fn expect_banner(lab: &Lab, ns: &str, (host, port): (&str, u16), hello: &str, what: &str) {
    let smtp = format!(
        "import socket\n\
         s = socket.create_connection(('{host}', {port}), timeout=10); f = s.makefile('rb')\n\
         print(f.readline().decode().strip()); s.sendall(b'HELO {hello}\\r\\n')\n\
         print(f.readline().decode().strip())"
    );
    let said = expect_ok(lab, ns, &smtp, what);
    assert!(said.starts_with("220 beta smtp ready"), "{what}: {said}");
    assert!(
        said.contains(&format!("250 got HELO {hello}")),
        "{what}: {said}"
    );
}

/// The sidecar's discovery state in `ns` (`/config` → `config.discovery`).
fn discovery_state(lab: &Lab, ns: &str) -> serde_json::Value {
    let get = "import json, urllib.request as u\n\
         print(json.dumps(json.load(u.urlopen('http://127.0.0.1:4191/config', timeout=5))['config']['discovery']))";
    let text = expect_ok(lab, ns, get, "the sidecar's /config");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("/config: {e}: {text}"))
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
