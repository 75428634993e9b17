//! The demo's layout: which pods run where (the pod table), the well-known ports, and the checks
//! that the mesh YAML and this machine agree with it. The table repeats what
//! `examples/demo-mesh.yaml` says because the demo must start processes before any config is
//! served; the test at the bottom keeps the two in step.

use anyhow::{bail, Context};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use trellis_control_plane::config::{MeshConfig, Protocol, Service};

/// The bundled mesh, so `cargo run -p trellis -- demo` needs no file from the checkout.
pub(super) const DEMO_MESH_YAML: &str = include_str!("../../../examples/demo-mesh.yaml");

pub(super) const CONTROL_PLANE: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 8090));
pub(super) const INBOUND_PORT: u16 = 4143;
pub(super) const OUTBOUND_PORT: u16 = 4140;
pub(super) const ADMIN_PORT: u16 = 4191;
/// The service the demo plays: its traffic enters the mesh through this service's sidecar.
pub(super) const SOURCE_SERVICE: &str = "frontend";
/// The services the burst alternates between.
pub(super) const TARGET_SERVICES: [&str; 2] = ["hello", "echo"];

/// One pod: an app and its sidecar on the pod's own loopback IP (as pods have their own IPs, every
/// sidecar can use the same ports). Must match `examples/demo-mesh.yaml` (see the test below).
#[derive(Debug, Clone, Copy)]
pub(super) struct Pod {
    pub(super) service: &'static str,
    pub(super) ip: Ipv4Addr,
    pub(super) app_port: u16,
    pub(super) protocol: Protocol,
}

pub(super) const PODS: [Pod; 4] = [
    Pod {
        service: "frontend",
        ip: Ipv4Addr::new(127, 0, 0, 5),
        app_port: 8080,
        protocol: Protocol::Http1,
    },
    Pod {
        service: "hello",
        ip: Ipv4Addr::new(127, 0, 0, 2),
        app_port: 8081,
        protocol: Protocol::Http1,
    },
    Pod {
        service: "hello",
        ip: Ipv4Addr::new(127, 0, 0, 3),
        app_port: 8081,
        protocol: Protocol::Http1,
    },
    Pod {
        service: "echo",
        ip: Ipv4Addr::new(127, 0, 0, 4),
        app_port: 8082,
        protocol: Protocol::H2c,
    },
];

impl Pod {
    fn at(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }
    pub(super) fn app(&self) -> SocketAddr {
        self.at(self.app_port)
    }
    pub(super) fn inbound(&self) -> SocketAddr {
        self.at(INBOUND_PORT)
    }
    pub(super) fn outbound(&self) -> SocketAddr {
        self.at(OUTBOUND_PORT)
    }
    pub(super) fn admin(&self) -> SocketAddr {
        self.at(ADMIN_PORT)
    }
}

/// `<service>-<replica>`, the replica counted among the pods of the same service.
pub(super) fn pod_name(index: usize) -> String {
    let pod = &PODS[index];
    let replica = PODS[..index]
        .iter()
        .filter(|p| p.service == pod.service)
        .count();
    format!("{}-{replica}", pod.service)
}

pub(super) fn source_pod() -> anyhow::Result<&'static Pod> {
    PODS.iter()
        .find(|p| p.service == SOURCE_SERVICE)
        .context("the pod table has no frontend pod")
}

pub(super) fn find_service<'a>(mesh: &'a MeshConfig, name: &str) -> anyhow::Result<&'a Service> {
    mesh.services
        .iter()
        .find(|s| s.name == name)
        .with_context(|| format!("the mesh config has no service {name:?}"))
}

/// The demo starts the pods of `PODS`, so a config given with `--config` must define their
/// services. A pod missing from its service's endpoints is allowed (it gets no traffic), but said.
pub(super) fn check_config_covers_pods(mesh: &MeshConfig, config_name: &str) -> anyhow::Result<()> {
    for (i, pod) in PODS.iter().enumerate() {
        let service = find_service(mesh, pod.service)
            .with_context(|| format!("{config_name}: the demo runs pod {}", pod_name(i)))?;
        if !service.endpoints.iter().any(|e| e.address == pod.inbound()) {
            eprintln!(
                "note: {config_name} does not list {} ({}) as an endpoint of {}; it will get no traffic",
                pod_name(i),
                pod.inbound(),
                pod.service
            );
        }
    }
    Ok(())
}

/// Binds each address the demo will use, briefly, so a clash is reported with the address
/// rather than as a child's exit.
pub(super) fn check_addresses_free() -> anyhow::Result<()> {
    let mut addrs = vec![CONTROL_PLANE];
    for pod in &PODS {
        addrs.extend([pod.app(), pod.inbound(), pod.outbound(), pod.admin()]);
    }
    for addr in addrs {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            let hint = match e.kind() {
                std::io::ErrorKind::AddrInUse => {
                    " (is another `trellis demo` running? `ss -ltnp` shows who holds it)"
                }
                // Linux routes all of 127.0.0.0/8 to loopback; macOS only 127.0.0.1.
                std::io::ErrorKind::AddrNotAvailable => {
                    " (on macOS, add the loopback alias: sudo ifconfig lo0 alias <ip> up)"
                }
                _ => "",
            };
            bail!("cannot use {addr}: {e}{hint}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn pod_table_matches_the_bundled_yaml() {
        let mesh = trellis_control_plane::config::parse("demo-mesh.yaml", DEMO_MESH_YAML).unwrap();
        for (i, pod) in PODS.iter().enumerate() {
            let service = find_service(&mesh, pod.service).unwrap();
            assert!(
                service.endpoints.iter().any(|e| e.address == pod.inbound()),
                "{} ({}) is not an endpoint of {}",
                pod_name(i),
                pod.inbound(),
                pod.service
            );
            let port = service.ports[0];
            assert_eq!(port.target_port, pod.app_port, "{} app port", pod_name(i));
            assert_eq!(port.protocol, pod.protocol, "{} protocol", pod_name(i));
        }
        // And the other way: every endpoint in the YAML is a pod the demo starts.
        for service in &mesh.services {
            for endpoint in &service.endpoints {
                assert!(
                    PODS.iter()
                        .any(|p| p.service == service.name && p.inbound() == endpoint.address),
                    "{} endpoint {} has no pod in PODS",
                    service.name,
                    endpoint.address
                );
            }
        }
        assert!(source_pod().is_ok());
        for name in TARGET_SERVICES {
            assert!(find_service(&mesh, name).is_ok(), "{name} missing");
        }
    }

    #[test]
    fn pods_are_named_by_replica() {
        let names: Vec<String> = (0..PODS.len()).map(pod_name).collect();
        assert_eq!(names, ["frontend-0", "hello-0", "hello-1", "echo-0"]);
    }

    #[test]
    fn pods_do_not_share_addresses() {
        let mut seen = BTreeSet::new();
        for pod in &PODS {
            for addr in [pod.app(), pod.inbound(), pod.outbound(), pod.admin()] {
                assert!(seen.insert(addr), "{addr} used twice");
            }
        }
    }
}
