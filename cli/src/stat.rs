//! `trellis stat`: the golden signals per service (or per route) across sidecars, from their admin
//! `/metrics`: requests, requests per second and success rate over a window between two scrapes,
//! and latency percentiles from the histogram buckets of that window (as Prometheus's
//! `histogram_quantile` would compute them). `--window 0` reads everything since the sidecars
//! started from one scrape (no rate). The sidecars are the `--admin` addresses given, or every
//! proxy the control plane lists at `/proxies` on its admin port (`--control-plane-admin`); a
//! sidecar that does not answer is named on stderr and left out, the others still count.

use anyhow::Context;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For people: a table (stat) or one line per item (tap, explain).
    #[value(alias = "table")]
    Text,
    /// For programs.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct StatArgs {
    /// A sidecar's admin address (repeat for several; their numbers are added up). Without it
    /// and without `--control-plane-admin`: 127.0.0.1:4191.
    #[arg(long)]
    pub admin: Vec<String>,
    /// The control plane's admin address (`127.0.0.1:9990`, or a `kubectl port-forward`): every
    /// connected sidecar it lists at `/proxies` is scraped.
    #[arg(long)]
    pub control_plane_admin: Option<String>,
    /// With `--control-plane-admin`: only the sidecars of this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Time between the two scrapes rates come from (`2s`, `500ms`); `0s`: since start, one scrape.
    #[arg(long, default_value = "2s", value_parser = parse_window)]
    pub window: Duration,
    /// One row per `service` or per `route`.
    #[arg(long, value_enum, default_value = "service")]
    pub by: By,
    /// Which side's requests: `outbound` (what callers saw) or `inbound` (what servers saw).
    #[arg(long, default_value = "outbound")]
    pub direction: String,
    /// `text` (a table) or `json`.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// One row per destination service.
    Service,
    /// One row per service and route.
    Route,
}

pub fn parse_window(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: write a duration such as 2s or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{text:?}: write a duration such as 2s or 500ms")),
    }
}

pub fn main(args: StatArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rows = runtime.block_on(collect(&args))?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Text => print!("{}", table(&rows, args.by)),
    }
    Ok(())
}

async fn collect(args: &StatArgs) -> anyhow::Result<Vec<serde_json::Value>> {
    let sidecars = sidecars(args).await?;
    let before = if args.window.is_zero() {
        Signals::default()
    } else {
        let first = scrape_all(args, &sidecars).await?;
        tokio::time::sleep(args.window).await;
        first
    };
    let after = scrape_all(args, &sidecars).await?;
    let seconds = (!args.window.is_zero()).then_some(args.window.as_secs_f64());
    Ok(after.since(&before).rows(seconds))
}

/// The admin addresses to scrape: those given, plus those the control plane lists.
async fn sidecars(args: &StatArgs) -> anyhow::Result<Vec<String>> {
    let mut sidecars = args.admin.clone();
    if let Some(control_plane) = &args.control_plane_admin {
        let text = crate::tap::get(control_plane, "/proxies")
            .await
            .with_context(|| {
                format!("asking the control plane at {control_plane} for its proxies")
            })?;
        let listed = listed_sidecars(&text, args.namespace.as_deref())
            .with_context(|| format!("reading {control_plane}/proxies"))?;
        if listed.is_empty() {
            anyhow::bail!(
                "the control plane at {control_plane} lists no proxy with an admin address{}",
                args.namespace
                    .as_ref()
                    .map(|n| format!(" in namespace {n}"))
                    .unwrap_or_default()
            );
        }
        sidecars.extend(listed);
    } else if sidecars.is_empty() {
        sidecars.push("127.0.0.1:4191".into());
    }
    sidecars.sort();
    sidecars.dedup();
    Ok(sidecars)
}

/// The admin addresses in a control plane's `/proxies` document, of `namespace` if given.
fn listed_sidecars(text: &str, namespace: Option<&str>) -> anyhow::Result<Vec<String>> {
    let doc: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
    let proxies = doc["proxies"]
        .as_array()
        .context("no \"proxies\" list in the answer")?;
    Ok((proxies.iter())
        .filter(|p| namespace.is_none_or(|n| p["namespace"] == n))
        .filter_map(|p| p["adminAddress"].as_str())
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect())
}

async fn scrape_all(args: &StatArgs, sidecars: &[String]) -> anyhow::Result<Signals> {
    let mut all = Signals::default();
    let mut answered = 0;
    let mut last_error = None;
    for admin in sidecars {
        let text = match crate::tap::get(admin, "/metrics").await {
            Ok(text) => text,
            Err(e) => {
                eprintln!("trellis stat: the sidecar at {admin} did not answer ({e:#}); its requests are not counted");
                last_error = Some(e);
                continue;
            }
        };
        answered += 1;
        let key = |s: &Sample| {
            if s.label("direction") != Some(args.direction.as_str()) {
                return None;
            }
            let service = s.label("dst_service")?.to_string();
            let route = match args.by {
                By::Service => String::new(),
                By::Route => s.label("route").unwrap_or_default().to_string(),
            };
            Some((service, route))
        };
        for sample in parse(&text).with_context(|| format!("reading {admin}/metrics"))? {
            let Some(k) = key(&sample) else { continue };
            let entry = all.0.entry(k).or_default();
            match sample.name.as_str() {
                "trellis_requests_total" => {
                    entry.requests += sample.value;
                    if sample.label("status_class") != Some("5xx") {
                        entry.successes += sample.value;
                    }
                }
                "trellis_request_duration_seconds_bucket" => {
                    let le = sample.label("le").unwrap_or("+Inf");
                    let le = le.parse::<f64>().unwrap_or(f64::INFINITY);
                    *entry.buckets.entry(Bound(le)).or_default() += sample.value;
                }
                _ => {}
            }
        }
    }
    match last_error {
        Some(e) if answered == 0 => Err(e.context("no sidecar answered")),
        _ => Ok(all),
    }
}

/// A bucket's upper bound, ordered (never NaN: parsed from `le`).
#[derive(Debug, Clone, Copy)]
struct Bound(f64);
impl PartialEq for Bound {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for Bound {}
impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[derive(Debug, Default, Clone)]
struct Signal {
    requests: f64,
    successes: f64,
    /// Cumulative counts by upper bound, as Prometheus exposes them.
    buckets: BTreeMap<Bound, f64>,
}

/// By (service, route); route is empty per service.
#[derive(Debug, Default)]
struct Signals(BTreeMap<(String, String), Signal>);

impl Signals {
    /// Counts in `self` minus those in `earlier` (a sidecar restarted in between shows from 0).
    fn since(mut self, earlier: &Signals) -> Signals {
        for (key, now) in &mut self.0 {
            let Some(then) = earlier.0.get(key) else {
                continue;
            };
            let minus = |a: f64, b: f64| if a >= b { a - b } else { a };
            now.requests = minus(now.requests, then.requests);
            now.successes = minus(now.successes, then.successes);
            for (le, count) in &mut now.buckets {
                *count = minus(*count, then.buckets.get(le).copied().unwrap_or(0.0));
            }
        }
        self
    }

    fn rows(&self, seconds: Option<f64>) -> Vec<serde_json::Value> {
        (self.0.iter())
            .map(|((service, route), s)| {
                let latency = |q: f64| quantile(q, &s.buckets).map(|v| round(v * 1000.0, 3));
                let mut row = serde_json::json!({
                    "service": service,
                    "requests": s.requests,
                    "rps": seconds.map(|t| round(s.requests / t, 2)),
                    "successRate": (s.requests > 0.0).then(|| round(s.successes / s.requests, 4)),
                    "latencyMs": {"p50": latency(0.5), "p95": latency(0.95), "p99": latency(0.99)},
                });
                if !route.is_empty() {
                    row["route"] = route.as_str().into();
                }
                row
            })
            .collect()
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// The q-quantile from cumulative buckets, interpolating linearly inside the bucket it falls in
/// (Prometheus's `histogram_quantile`); in the +Inf bucket, the highest finite bound.
fn quantile(q: f64, buckets: &BTreeMap<Bound, f64>) -> Option<f64> {
    let total = buckets.get(&Bound(f64::INFINITY)).copied()?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (Bound(le), count) in buckets {
        if *count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            let share = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some(lower + (le - lower) * share);
        }
        (lower, below) = (*le, *count);
    }
    Some(lower)
}

fn table(rows: &[serde_json::Value], by: By) -> String {
    let mut out = String::new();
    let route_col = by == By::Route;
    out.push_str(&format!("{:<28} ", "SERVICE"));
    if route_col {
        out.push_str(&format!("{:<20} ", "ROUTE"));
    }
    out.push_str(&format!(
        "{:>9} {:>8} {:>8} {:>9} {:>9} {:>9}\n",
        "REQUESTS", "RPS", "SUCCESS", "P50", "P95", "P99"
    ));
    for r in rows {
        out.push_str(&format!(
            "{:<28} ",
            r["service"].as_str().unwrap_or_default()
        ));
        if route_col {
            out.push_str(&format!("{:<20} ", r["route"].as_str().unwrap_or_default()));
        }
        let rps = r["rps"].as_f64().map_or("-".into(), |v| format!("{v:.1}"));
        let success =
            (r["successRate"].as_f64()).map_or("-".into(), |v| format!("{:.2}%", v * 100.0));
        let ms = |k: &str| (r["latencyMs"][k].as_f64()).map_or("-".into(), |v| format!("{v:.1}ms"));
        out.push_str(&format!(
            "{:>9} {:>8} {:>8} {:>9} {:>9} {:>9}\n",
            r["requests"].as_f64().unwrap_or_default(),
            rps,
            success,
            ms("p50"),
            ms("p95"),
            ms("p99"),
        ));
    }
    if rows.is_empty() {
        out.push_str("(no requests in the window)\n");
    }
    out
}

/// One sample of the Prometheus text format.
#[derive(Debug, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        (self.labels.iter()).find_map(|(k, v)| (k == key).then_some(v.as_str()))
    }
}

/// The samples of a Prometheus text exposition (0.0.4); comments are skipped.
fn parse(text: &str) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || anyhow::anyhow!("line {}: not a Prometheus sample: {line}", n + 1);
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let (labels, rest) = parse_labels(&line[open + 1..]).ok_or_else(bad)?;
                (&line[..open], labels, rest)
            }
            None => {
                let (name, rest) = line.split_once(' ').ok_or_else(bad)?;
                (name, Vec::new(), rest)
            }
        };
        let value = rest.split_whitespace().next().ok_or_else(bad)?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad())?,
        };
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(samples)
}

/// `k="v",k2="v2"} rest` → the labels and `rest`.
fn parse_labels(text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_string(), value));
        rest = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests;
