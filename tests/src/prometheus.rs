//! A real Prometheus server for the suites that check metrics as operators consume them
//! (tests/tests/metrics.rs, operability.rs): it scrapes the given admin ports every second from
//! its own temporary directory and answers PromQL over its HTTP API. Killed when dropped.
use crate::TestClient;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

pub struct Prometheus {
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts `binary` scraping `targets` (`host:port` of `/metrics`) every second.
    pub fn scraping(binary: &Path, targets: &[String]) -> anyhow::Result<Prometheus> {
        let dir = tempfile::tempdir()?;
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: sidecars\n    static_configs:\n      - targets: {targets:?}\n"
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let child = tokio::process::Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        Ok(Prometheus {
            _child: child,
            _dir: dir,
            addr,
        })
    }

    /// The result rows of an instant query (`{"metric": {...}, "value": [t, "v"]}`); Err with
    /// Prometheus's answer for a bad query, or the error while it is not up yet.
    pub async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", crate::tools::urlencode(promql));
        let (_, body) = (TestClient::new(self.addr, false))
            .get(&self.addr.to_string(), &path)
            .await
            .map_err(|e| e.to_string())?;
        let doc: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if doc["status"] != "success" {
            return Err(doc.to_string());
        }
        Ok(doc["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}
