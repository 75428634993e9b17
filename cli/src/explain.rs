//! `trellis explain`: asks a sidecar's admin `/explain` what it would do with one request (route
//! and why the earlier ones did not match, policy, budget, endpoints, recent requests on that
//! route) and, given the destination's admin port, which authorization rule decides it there for
//! this sidecar's identity. The sidecar computes everything; this renders it.

use crate::stat::Output;
use crate::tap::{encode, get};
use anyhow::Context;
use serde_json::Value;
use std::fmt::Write;

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The calling sidecar's admin address. /explain answers loopback callers: run this in the
    /// pod, or through `kubectl port-forward pod/NAME 4191`.
    #[arg(long, default_value = "127.0.0.1:4191")]
    pub admin: String,
    /// The request's method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// The request's authority, `service[:port]`, as the app sends it in Host.
    #[arg(long)]
    pub authority: String,
    /// The request's path.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// A request header, `name:value` (repeat for several).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// The destination sidecar's admin address: also show which of its authorization rules
    /// allows or denies the request from this sidecar's identity.
    #[arg(long)]
    pub destination_admin: Option<String>,
    /// How many recent requests on the route to show (of the last 64 the sidecar finished).
    #[arg(long, default_value_t = 10)]
    pub recent: usize,
    /// First watch the sidecar's requests for this long (`5s`), as `trellis tap` does, so that
    /// requests arriving meanwhile are among the recent ones listed.
    #[arg(long, value_parser = crate::stat::parse_window)]
    pub watch: Option<std::time::Duration>,
    /// `text` or `json` (the sidecar's answer, with the destination's decision under
    /// `authorization`).
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

pub fn main(args: ExplainArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let doc = runtime.block_on(fetch(&args))?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        Output::Text => print!("{}", render(&doc)),
    }
    Ok(())
}

fn query(args: &ExplainArgs, from: Option<&str>) -> String {
    let mut q = format!(
        "/explain?method={}&authority={}&path={}&recent={}",
        encode(&args.method),
        encode(&args.authority),
        encode(&args.path),
        args.recent
    );
    for h in &args.headers {
        q.push_str(&format!("&header={}", encode(h)));
    }
    if let Some(from) = from {
        q.push_str(&format!("&from={}", encode(from)));
    }
    q
}

async fn fetch(args: &ExplainArgs) -> anyhow::Result<Value> {
    if let Some(watch) = args.watch {
        // Summaries are kept only while a tap is attached: hold one open, reading what it sends.
        let seconds = watch.as_secs().max(1) + 1;
        let tap = format!("/tap?max=100000&seconds={seconds}");
        let mut body = crate::tap::open(&args.admin, &tap).await?;
        let drain =
            async { while let Some(Ok(_)) = http_body_util::BodyExt::frame(&mut body).await {} };
        let _ = tokio::time::timeout(watch, drain).await;
    }
    let text = get(&args.admin, &query(args, None)).await?;
    let mut doc: Value = serde_json::from_str(&text).context("the sidecar's /explain answer")?;
    if let Some(dest) = &args.destination_admin {
        let caller = doc["sidecar"].as_str().unwrap_or("anonymous").to_string();
        let there = get(dest, &query(args, Some(&caller))).await?;
        let there: Value = serde_json::from_str(&there).context("the destination's /explain")?;
        let mut decision = there["authorization"].clone();
        if decision.is_object() {
            decision["at"] = dest.as_str().into();
            decision["destination"] = there["sidecar"].clone();
        }
        doc["authorization"] = decision;
    }
    Ok(doc)
}

/// The explanation for people.
pub fn render(doc: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let req = &doc["request"];
    let mut out = String::new();
    let port = req["port"]
        .as_u64()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "request   {} {}{port}{}",
        s(&req["method"]),
        s(&req["authority"]),
        s(&req["path"])
    );
    if let Some(headers) = req["headers"].as_object().filter(|h| !h.is_empty()) {
        for (k, v) in headers {
            let _ = writeln!(out, "          {k}: {}", s(v));
        }
    }
    let _ = writeln!(out, "sidecar   {}", s(&doc["sidecar"]));
    if let Some(why) = doc["noRoute"].as_str() {
        let _ = writeln!(out, "route     none: {why}");
        return out;
    }
    let _ = writeln!(
        out,
        "route     {} in {}",
        s(&doc["route"]),
        s(&doc["routeTable"])
    );
    for r in doc["routes"].as_array().into_iter().flatten() {
        let mark = if r["matched"] == true { "✓" } else { "✗" };
        let _ = writeln!(out, "  {mark} {}: {}", s(&r["name"]), s(&r["why"]));
    }
    for b in doc["backends"].as_array().into_iter().flatten() {
        render_backend(&mut out, b);
    }
    match &doc["authorization"] {
        Value::Null => {}
        a => {
            let at = a["at"]
                .as_str()
                .map(|d| format!(" at {d}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "authorization{at}: {} by rule {} (caller {})",
                s(&a["action"]).to_uppercase(),
                s(&a["rule"]),
                s(&a["caller"])
            );
        }
    }
    let recent = doc["recent"].as_array().cloned().unwrap_or_default();
    if recent.is_empty() {
        let _ = writeln!(
            out,
            "recent    none on this route among the last 64 the sidecar handled"
        );
    } else {
        let _ = writeln!(
            out,
            "recent    {} on this route, newest last:",
            recent.len()
        );
        for r in &recent {
            if r["inFlight"] == true {
                let _ = writeln!(out, "  {} {} -> in flight", s(&r["method"]), s(&r["path"]));
                continue;
            }
            let _ = writeln!(
                out,
                "  {} {} -> {} in {:.1}ms, {} attempt(s){}",
                s(&r["method"]),
                s(&r["path"]),
                r["status"].as_u64().unwrap_or_default(),
                r["duration_ms"].as_f64().unwrap_or_default(),
                r["attempts"].as_u64().unwrap_or(1),
                r["error"]
                    .as_str()
                    .map(|e| format!(", error: {e}"))
                    .unwrap_or_default(),
            );
        }
    }
    out
}

fn render_backend(out: &mut String, b: &Value) {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let _ = writeln!(
        out,
        "backend   {} (weight {})",
        s(&b["cluster"]),
        b["weight"]
    );
    if let Some(problem) = b["problem"].as_str() {
        let _ = writeln!(out, "  problem: {problem}");
        return;
    }
    let p = &b["policy"];
    let retry = &p["retry"];
    let applies = if p["retriesApply"] == true {
        ""
    } else {
        " (one only for this method: it is not idempotent)"
    };
    let _ = writeln!(
        out,
        "  timeout {} (from {}), connect {}; up to {} attempts (retry policy from {}){applies}",
        s(&p["timeout"]),
        s(&p["timeoutFrom"]),
        s(&p["connectTimeout"]),
        retry["maxAttempts"],
        s(&p["retryFrom"]),
    );
    let budget = &p["budget"];
    let _ = writeln!(
        out,
        "  retry budget: {} of {} retries used in the last 10s{}",
        budget["retriesLast10s"],
        budget["retriesAllowed"],
        if budget["exhausted"] == true {
            " (EXHAUSTED: retries are refused)"
        } else {
            ""
        }
    );
    let pair = |k: &str| format!("{}/{}", p["breaker"][k][0], p["breaker"][k][1]);
    let _ = writeln!(
        out,
        "  circuit breaker in use: requests {}, pending {}, retries {}",
        pair("requests"),
        pair("pending"),
        pair("retries")
    );
    for e in b["endpoints"].as_array().into_iter().flatten() {
        let state = match e["ejectedFor"].as_str() {
            Some(left) => format!("EJECTED for {left}"),
            None if e["ejected"] == true => "EJECTED".into(),
            None => "ok".into(),
        };
        let latency = (e["latencyEwmaMs"].as_f64())
            .map(|ms| format!(", latency ~{ms:.1}ms"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  endpoint {} {} {state}, {} outstanding{latency}",
            s(&e["address"]),
            s(&e["identity"]),
            e["outstanding"]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_route_reasons_endpoints_and_the_decision() {
        let doc = serde_json::json!({
            "sidecar": "spiffe://t/ns/d/sa/client",
            "request": {"method": "GET", "authority": "hello", "port": 80, "path": "/home", "headers": {}},
            "routeTable": "d/hello",
            "route": "default",
            "routes": [
                {"name": "api", "matched": false, "why": "path /home does not match prefix /api"},
                {"name": "default", "matched": true, "why": "matched"}
            ],
            "backends": [{
                "cluster": "d/hello", "weight": 1,
                "policy": {"timeout": "15s", "timeoutFrom": "cluster", "connectTimeout": "1s",
                           "retry": {"maxAttempts": 2}, "retryFrom": "cluster", "retriesApply": true,
                           "budget": {"retriesLast10s": 0, "retriesAllowed": 100, "exhausted": false},
                           "breaker": {"requests": [1, 1024], "pending": [0, 1024], "retries": [0, 3]}},
                "endpoints": [{"address": "127.0.0.2:4143", "identity": "spiffe://h", "ejected": true,
                               "ejectedFor": "29s", "outstanding": 0}]
            }],
            "authorization": {"caller": "spiffe://t/ns/d/sa/client", "action": "deny", "rule": "default",
                              "at": "127.0.0.2:4191"},
            "recent": [
                {"method": "GET", "path": "/home", "status": 503, "duration_ms": 1.25, "attempts": 2},
                {"method": "POST", "path": "/home", "inFlight": true}
            ]
        });
        let text = render(&doc);
        for want in [
            "request   GET hello:80/home",
            "route     default in d/hello",
            "  ✗ api: path /home does not match prefix /api",
            "  timeout 15s (from cluster), connect 1s; up to 2 attempts (retry policy from cluster)",
            "  retry budget: 0 of 100 retries used in the last 10s\n",
            "  circuit breaker in use: requests 1/1024, pending 0/1024, retries 0/3",
            "  endpoint 127.0.0.2:4143 spiffe://h EJECTED for 29s, 0 outstanding",
            "authorization at 127.0.0.2:4191: DENY by rule default (caller spiffe://t/ns/d/sa/client)",
            "recent    2 on this route, newest last:\n",
            "  GET /home -> 503 in 1.2ms, 2 attempt(s)\n",
            "  POST /home -> in flight\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
