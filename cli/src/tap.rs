//! `trellis tap`: prints a sidecar's live request summaries (its admin `/tap` stream) until `--max`
//! lines or `--seconds` have gone by. Also the admin-port client `explain` and `stat` share.

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

#[derive(Debug, clap::Args)]
pub struct TapArgs {
    /// The sidecar's admin address. /tap answers loopback callers: run this in the pod, or
    /// through `kubectl port-forward pod/NAME 4191`.
    #[arg(long, default_value = "127.0.0.1:4191")]
    pub admin: String,
    /// Stop after this many requests.
    #[arg(long, default_value_t = 100)]
    pub max: u64,
    /// Stop after this many seconds even if fewer requests went by.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only requests on this route (outbound) or `inbound`.
    #[arg(long)]
    pub route: Option<String>,
    /// Only `inbound` or `outbound` requests.
    #[arg(long)]
    pub direction: Option<String>,
    /// `text` (one line per request) or `json` (the stream as the sidecar sends it).
    #[arg(long, value_enum, default_value = "text")]
    pub output: crate::stat::Output,
}

pub fn main(args: TapArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: TapArgs) -> anyhow::Result<()> {
    let mut query = format!("/tap?max={}&seconds={}", args.max, args.seconds);
    for (key, value) in [("route", &args.route), ("direction", &args.direction)] {
        if let Some(v) = value {
            query.push_str(&format!("&{key}={}", encode(v)));
        }
    }
    let mut body = open(&args.admin, &query).await?;
    if args.output == crate::stat::Output::Text {
        println!(
            "{:<8} {:<6} {:<24} {:<24} {:>6} {:>10} {:>3}  SOURCE -> DESTINATION",
            "DIR", "METHOD", "AUTHORITY", "PATH", "STATUS", "LATENCY", "TRY"
        );
    }
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the tap stream broke off")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            match args.output {
                crate::stat::Output::Json => print!("{line}"),
                crate::stat::Output::Text => println!("{}", render(line.trim_end())),
            }
        }
    }
    Ok(())
}

/// One summary as a table row.
pub fn render(line: &str) -> String {
    let Ok(s) = serde_json::from_str::<serde_json::Value>(line) else {
        return line.to_string();
    };
    if let Some(n) = s["dropped"].as_u64() {
        return format!("({n} requests dropped: this terminal reads slower than they come)");
    }
    let text = |k: &str| s[k].as_str().unwrap_or("-").to_string();
    format!(
        "{:<8} {:<6} {:<24} {:<24} {:>6} {:>8.1}ms {:>3}  {} -> {}",
        text("direction"),
        text("method"),
        text("authority"),
        text("path"),
        s["status"].as_u64().unwrap_or_default(),
        s["duration_ms"].as_f64().unwrap_or_default(),
        s["attempts"].as_u64().unwrap_or(1),
        text("source"),
        text("destination"),
    )
}

/// GET on an admin port; the body of a 200, or an error that says what to do.
pub async fn open(admin: &str, path_and_query: &str) -> anyhow::Result<Incoming> {
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| {
            format!(
                "cannot reach the sidecar's admin port at {admin}: is the sidecar running, and is \
             {admin} its --admin address (default 127.0.0.1:4191)?"
            )
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path_and_query)
        .header(http::header::HOST, admin)
        .body(Empty::<Bytes>::new())?;
    let rsp = sender
        .send_request(req)
        .await
        .with_context(|| format!("{admin} did not answer {path_and_query}"))?;
    let status = rsp.status();
    if status.is_success() {
        return Ok(rsp.into_body());
    }
    let text = rsp.into_body().collect().await.map(|b| b.to_bytes());
    let text = String::from_utf8_lossy(&text.unwrap_or_default())
        .trim()
        .to_string();
    let endpoint = path_and_query.split('?').next().unwrap_or_default();
    match status {
        http::StatusCode::FORBIDDEN => bail!(
            "{admin} refused {endpoint} ({text}): call it from inside the pod, or through \
             `kubectl port-forward pod/NAME 4191` and --admin 127.0.0.1:4191"
        ),
        http::StatusCode::NOT_FOUND => bail!(
            "{admin} has no {endpoint}: the sidecar is older than this trellis command; upgrade it"
        ),
        _ => bail!("{admin} answered {endpoint} with {status}: {text}"),
    }
}

/// How long a whole admin GET (`/metrics`, `/proxies`, `/explain`) may take: a sidecar that
/// accepts and then stays silent must not hang `trellis stat` over a whole fleet.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The whole body of an admin GET, as text.
pub async fn get(admin: &str, path_and_query: &str) -> anyhow::Result<String> {
    get_within(admin, path_and_query, ANSWER_WITHIN).await
}

async fn get_within(
    admin: &str,
    path_and_query: &str,
    limit: std::time::Duration,
) -> anyhow::Result<String> {
    let exchange = async {
        let body = open(admin, path_and_query).await?;
        let bytes = body
            .collect()
            .await
            .with_context(|| format!("reading {path_and_query} from {admin}"))?
            .to_bytes();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(answer) => answer,
        Err(_) => bail!("{admin} did not answer {path_and_query} within {limit:?}"),
    }
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sidecar_that_accepts_and_stays_silent_is_an_error_not_a_hang() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = silent.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            // Accepts and keeps the connection open without a byte of answer.
            let (stream, _) = silent.accept().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            drop(stream);
        });
        let started = std::time::Instant::now();
        let limit = std::time::Duration::from_millis(300);
        let err = get_within(&admin, "/metrics", limit).await.unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("{admin} did not answer /metrics within 300ms")),
            "{err}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
        held.abort();
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("x-canary: 1/2&a=b"), "x-canary%3A%201%2F2%26a%3Db");
        assert_eq!(encode("plain-value_1.0~"), "plain-value_1.0~");
    }

    #[test]
    fn a_summary_renders_as_one_row_with_both_sides() {
        let line = r#"{"direction":"outbound","method":"GET","authority":"hello","path":"/x","status":200,"duration_ms":1.5,"attempts":2,"source":"spiffe://a","destination":"spiffe://b"}"#;
        let row = render(line);
        assert!(row.starts_with("outbound GET    hello"), "{row}");
        assert!(
            row.contains("   200      1.5ms   2  spiffe://a -> spiffe://b"),
            "{row}"
        );
        assert_eq!(
            render(r#"{"dropped":3}"#),
            "(3 requests dropped: this terminal reads slower than they come)"
        );
    }
}
