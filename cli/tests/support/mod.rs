//! Test support for the cluster commands (`install`, `upgrade`, `check`): a FAKE Kubernetes API
//! server and helpers to run the `trellis` binary against it. The fake is not a cluster: it answers
//! GETs from a table of objects the test puts at their API paths (as the API server returns them:
//! `trellis install`'s own documents, with statuses added), 404 with a `Status` for anything else,
//! plain-text answers for pod proxy paths (a proxy's `/metrics`), and SelfSubjectAccessReview
//! POSTs (allowed unless the test denied the resource). Lists are objects too (`/api/v1/pods`);
//! query strings are ignored. Watches are the control plane's fake's business
//! (`control-plane/tests/fake_api_server/`); nothing here needs one.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

const ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";

#[derive(Default)]
struct Table {
    objects: HashMap<String, Value>,
    texts: HashMap<String, String>,
    denied: HashSet<String>,
    requests: Vec<String>,
}

pub struct FakeApiServer {
    addr: SocketAddr,
    table: Arc<Mutex<Table>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeApiServer {
    /// Serves `/version` (v1.33.1) and nothing else until the test puts objects.
    pub async fn start() -> FakeApiServer {
        let table = Arc::new(Mutex::new(Table::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = table.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let table = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let table = table.clone();
                        async move { Ok::<_, Infallible>(handle(&table, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let fake = FakeApiServer { addr, table, task };
        fake.put(
            "/version",
            json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.1",
                "gitCommit": "8adc0f041b8e7ad1d30e29cc59c6ae7a15e19828", "gitTreeState": "clean",
                "buildDate": "2025-05-15T08:19:08Z", "goVersion": "go1.24.2", "compiler": "gc",
                "platform": "linux/amd64"
            }),
        );
        fake
    }

    pub fn put(&self, path: &str, object: Value) {
        self.table
            .lock()
            .unwrap()
            .objects
            .insert(path.to_owned(), object);
    }

    /// Puts `object` at the API path its apiVersion, kind, namespace and name give.
    pub fn put_object(&self, object: Value) {
        self.put(&api_path(&object), object);
    }

    pub fn remove(&self, path: &str) {
        self.table.lock().unwrap().objects.remove(path);
    }

    pub fn object(&self, path: &str) -> Value {
        self.table.lock().unwrap().objects[path].clone()
    }

    /// A plain-text answer (e.g. a pod's `/metrics` through the pod proxy).
    pub fn put_text(&self, path: &str, text: &str) {
        self.table
            .lock()
            .unwrap()
            .texts
            .insert(path.to_owned(), text.to_owned());
    }

    /// SelfSubjectAccessReviews for `resource` are answered `allowed: false`.
    pub fn deny(&self, resource: &str) {
        self.table
            .lock()
            .unwrap()
            .denied
            .insert(resource.to_owned());
    }

    pub fn requests(&self) -> Vec<String> {
        self.table.lock().unwrap().requests.clone()
    }

    /// Writes a kubeconfig pointing at this fake into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: \"http://{}\"}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The API path of an object.
pub fn api_path(object: &Value) -> String {
    let api_version = object["apiVersion"].as_str().unwrap();
    let kind = object["kind"].as_str().unwrap();
    // Every kind an install holds makes its plural this way (no "-y", "-s" endings).
    let plural = format!("{}s", kind.to_lowercase());
    path_prefix(api_version, object, &plural)
}

fn path_prefix(api_version: &str, object: &Value, plural: &str) -> String {
    let root = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    let name = object["metadata"]["name"].as_str().unwrap();
    let plural_name = format!("{plural}/{name}");
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{root}/namespaces/{ns}/{}", plural_name),
        None => format!("{root}/{plural_name}"),
    }
}

async fn handle(table: &Mutex<Table>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    table
        .lock()
        .unwrap()
        .requests
        .push(format!("{} {}", req.method(), req.uri()));
    if req.method() == Method::POST && path == ACCESS_REVIEWS {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let mut review: Value = serde_json::from_slice(&body).unwrap();
        let resource = review["spec"]["resourceAttributes"]["resource"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let denied = table.lock().unwrap().denied.contains(&resource);
        review["status"] = if denied {
            json!({"allowed": false, "reason": "RBAC: no rule allows it"})
        } else {
            json!({"allowed": true, "reason": "RBAC: allowed by ClusterRoleBinding \"admin\""})
        };
        return answer(StatusCode::CREATED, "application/json", review.to_string());
    }
    if req.method() != Method::GET {
        return answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "application/json",
            status(405, "MethodNotAllowed", "the fake only serves GET"),
        );
    }
    let table = table.lock().unwrap();
    if let Some(object) = table.objects.get(&path) {
        return answer(StatusCode::OK, "application/json", object.to_string());
    }
    if let Some(text) = table.texts.get(&path) {
        return answer(StatusCode::OK, "text/plain; version=0.0.4", text.clone());
    }
    let message = format!("the server could not find the requested resource ({path})");
    answer(
        StatusCode::NOT_FOUND,
        "application/json",
        status(404, "NotFound", &message),
    )
}

fn status(code: u16, reason: &str, message: &str) -> String {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": {}, "code": code
    })
    .to_string()
}

fn answer(code: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// Runs `trellis ARGS` (off the async runtime, so the fake keeps serving).
pub async fn trellis(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(&args)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// The documents of a YAML stream, as JSON.
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml).unwrap()
}

/// `(kind, name)` of every document.
pub fn kinds_and_names(docs: &[Value]) -> Vec<(String, String)> {
    (docs.iter())
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_owned(),
                d["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A Secret's `data` entry, decoded.
pub fn secret_data(secret: &Value, key: &str) -> String {
    let data: k8s_openapi::ByteString =
        serde_json::from_value(secret["data"][key].clone()).unwrap();
    String::from_utf8(data.0).unwrap()
}
