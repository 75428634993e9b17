//! `pingora-baseline --listen ADDR --upstream ADDR`: the smallest honest pingora reverse proxy.
//! Every request goes to the one upstream over plain HTTP/1.1 with pingora's connection pool;
//! no filters, no logging on the request path. Two worker threads, like the other proxies in the
//! benchmark on a 2-core machine.
#![forbid(unsafe_code)]

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use std::net::SocketAddr;
use std::sync::Arc;

struct Baseline {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Baseline {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn arg(args: &[String], name: &str) -> std::result::Result<SocketAddr, String> {
    let value = args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .ok_or_else(|| format!("missing {name} ADDR"))?;
    let addr: SocketAddr = value.parse().map_err(|e| format!("{name} {value}: {e}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{name} {addr}: the benchmark only uses loopback addresses"
        ));
    }
    Ok(addr)
}

fn main() -> std::result::Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let listen = arg(&args, "--listen")?;
    let upstream = arg(&args, "--upstream")?;
    let mut server = Server::new(None).map_err(|e| format!("starting pingora: {e}"))?;
    if let Some(conf) = Arc::get_mut(&mut server.configuration) {
        conf.threads = 2;
    }
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Baseline { upstream });
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    server.run_forever()
}
