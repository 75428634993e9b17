//! Transparent mode completeness, in network namespaces (root only; topology in `netns/lab.rs`):
//! dual-stack pods and calls to the caller's own pod.
//!
//! The pod link carries IPv4 and IPv6; both pods run the redirect with ip6tables too. Pod A's
//! sidecar listens as the injector configures it (one socket per family); pod B's uses single
//! dual-stack `[::]` sockets, where IPv4 connections arrive as IPv4-mapped addresses and the
//! original destination must still be looked up as IPv4. Every call is HTTP from an app to a pod
//! address, as if there were no mesh, and must arrive with the caller's verified identity (so it
//! crossed mTLS): A to B and B to A over each family, then each pod calling a service whose
//! chosen endpoint is its own pod, which must be served by its own inbound listener (before the
//! fix, the TLS ClientHello reached the app: `502 … corrupt message`).
//!
//! Without root or the tools it prints SKIPPED; under CI (`CI` set) it fails instead.

#[path = "netns/lab.rs"]
mod lab;

use lab::*;

const A6: &str = "fd00:231::1";
const B6: &str = "fd00:231::2";
/// Alpha's virtual addresses (ClusterIPs of a dual-stack Service), routed out of the pods like a
/// node's service range: only the sidecar knows them.
const ALPHA_VIP: &str = "10.231.9.1";
const ALPHA_VIP6: &str = "fd00:231:9::1";

fn mesh_yaml() -> String {
    format!(
        "trustDomain: trellis.local
services:
  - name: alpha
    serviceAccount: alpha
    addresses: [\"{ALPHA_VIP}\", \"{ALPHA_VIP6}\"]
    ports:
      - {{port: 8080, targetPort: 8080, protocol: http1}}
      - {{port: 80, targetPort: 8080, protocol: http1}}
      - {{port: 25, targetPort: 2525}}
    endpoints: [{{address: \"{A_POD}:8080\"}}]
  # Pod A again, by its IPv6 address only: a self-call over IPv6 has one endpoint to pick.
  - name: alpha6
    serviceAccount: alpha
    ports: [{{port: 8080, targetPort: 8080, protocol: http1}}]
    endpoints: [{{address: \"[{A6}]:8080\"}}]
  - name: beta
    serviceAccount: beta
    ports: [{{port: 8080, targetPort: 8080, protocol: http1}}]
    endpoints: [{{address: \"{B_POD}:8080\"}}, {{address: \"[{B6}]:8080\"}}]
"
    )
}

/// Python: GET `url` with `Host: host` and print the answer (the sample app's JSON), or the
/// status and the proxy's reason for an error status.
fn get(url: &str, host: &str) -> String {
    format!(
        "import urllib.request as u, urllib.error as e, sys\n\
         r = u.Request('{url}', headers={{'Host': '{host}'}})\n\
         try: sys.stdout.write(u.urlopen(r, timeout=10).read().decode())\n\
         except e.HTTPError as x: print('status', x.code, x.headers.get('trellis-error'))"
    )
}

#[test]
fn dual_stack_pods_and_self_calls_in_network_namespaces() {
    if !can_run("dual_stack_pods_and_self_calls_in_network_namespaces") {
        return;
    }
    let mut lab = Lab::new();
    let [a, b, _c] = lab.ns.clone();
    lab.add_address(&a, "ab", &format!("{A6}/64"));
    lab.add_address(&b, "ba", &format!("{B6}/64"));

    for (ns, end) in [(&a, "ab"), (&b, "ba")] {
        lab.add_route(ns, end, "10.231.9.0/24");
        lab.add_route(ns, end, "fd00:231:9::/64");
    }
    let cp = lab.start_control_plane(&mesh_yaml());
    for (ns, name) in [(&a, "alpha"), (&b, "beta")] {
        let mut app = lab.cmd(ns, BIN);
        app.args(["sample-app", "--name", name, "--listen", "0.0.0.0:8080"]);
        lab.spawn(&format!("{name}-app"), app);
        lab.redirect(ns, &["--ipv6", "on"]);
    }
    let mut banner = lab.cmd(&a, "python3");
    banner.args(["-u", "-c", &banner_server("alpha ready")]);
    lab.spawn("alpha-banner", banner);
    let dual_stack = Listen {
        inbound: "[::]:4143",
        outbound: "[::]:4140",
        admin: "[::]:4191",
    };
    let alpha = lab.sidecar(&cp, (&a, "alpha", C_FOR_A), &INJECTED, &[]);
    lab.spawn("alpha-proxy", alpha);
    let beta = lab.sidecar(&cp, (&b, "beta", C_FOR_B), &dual_stack, &[]);
    lab.spawn("beta-proxy", beta);
    lab.wait_ready(&a);
    lab.wait_ready(&b);

    let pid = std::process::id();
    let caller = |sa: &str| format!("\"caller\":\"spiffe://trellis.local/ns/default/sa/{sa}\"");
    // (from, URL, Host, the answering service, the caller it must see)
    let mut cases: Vec<(&String, String, String, &str, &str)> = Vec::new();
    let mut call = |from, url: String, host: &str, service, caller| {
        cases.push((from, url, host.to_owned(), service, caller));
    };
    for (pod, tag) in [(B_POD.to_owned(), "v4"), (format!("[{B6}]"), "v6")] {
        call(
            &a,
            format!("http://{pod}:8080/{tag}-{pid}"),
            "beta:8080",
            "beta",
            "alpha",
        );
    }
    for (pod, tag) in [(A_POD.to_owned(), "v4"), (format!("[{A6}]"), "v6")] {
        call(
            &b,
            format!("http://{pod}:8080/{tag}-{pid}"),
            "alpha:8080",
            "alpha",
            "beta",
        );
    }
    // Self-calls: the app names a service (Host) whose endpoint is its own pod.
    let self_v4 = format!("http://{B_POD}:8080/self-v4-{pid}");
    call(&a, self_v4, "alpha:8080", "alpha", "alpha");
    let self_v6 = format!("http://[{B6}]:8080/self-v6-{pid}");
    call(&a, self_v6, "alpha6:8080", "alpha", "alpha");
    for (i, pod) in [A_POD.to_owned(), format!("[{A6}]")]
        .iter()
        .cycle()
        .take(4)
        .enumerate()
    {
        let url = format!("http://{pod}:8080/self-{i}-{pid}");
        call(&b, url, "beta:8080", "beta", "beta");
    }
    // Alpha's virtual addresses, from B and from A itself (a self-call through the VIP); the
    // Host is the address, as a client writes it, so the VIP alone says which service.
    for (vip, tag) in [
        (ALPHA_VIP.to_owned(), "v4"),
        (format!("[{ALPHA_VIP6}]"), "v6"),
    ] {
        call(
            &b,
            format!("http://{vip}/vip-{tag}-{pid}"),
            &vip,
            "alpha",
            "beta",
        );
        call(
            &a,
            format!("http://{vip}/vip-self-{tag}-{pid}"),
            &vip,
            "alpha",
            "alpha",
        );
    }
    let mut failures = Vec::new();
    for (from, url, host, service, by) in &cases {
        let out = lab.python(from, &get(url, host));
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        let path = url.rsplit('/').next().unwrap_or_default();
        let ok = out.status.success()
            && said.contains(&format!("\"service\":\"{service}\""))
            && said.contains(path)
            && said.contains(&caller(by));
        if !ok {
            failures.push(format!(
                "{url} (Host {host}) from {by}'s pod: {said}{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    // Opaque TCP to alpha's virtual addresses from alpha's own pod: over mTLS to its own inbound
    // listener, then to the banner's target port.
    for vip in [ALPHA_VIP, ALPHA_VIP6] {
        let talk = format!(
            "import socket\n\
             s = socket.create_connection(('{vip}', 25), timeout=10); f = s.makefile('rb')\n\
             print(f.readline().decode().strip()); s.sendall(b'HELO {pid}\\r\\n')\n\
             print(f.readline().decode().strip())"
        );
        let out = lab.python(&a, &talk);
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        if !(said.starts_with("220 alpha ready") && said.contains(&format!("250 got HELO {pid}"))) {
            failures.push(format!(
                "opaque self-call to {vip}:25: {said}{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} calls failed:\n{}\n{}",
        failures.len(),
        cases.len() + 2,
        failures.join("\n"),
        lab.logs()
    );
}
