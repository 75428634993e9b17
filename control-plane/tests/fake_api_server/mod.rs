//! A FAKE Kubernetes API server for tests: plain HTTP on 127.0.0.1:0, replaying recorded API
//! responses from `tests/fixtures/k8s/`. It is not a cluster: it answers list requests with the
//! recorded `*List` documents (filtered by an equality `labelSelector`, as the API server would),
//! watch requests (`?watch=true&resourceVersion=N`) with the recorded events newer than N followed
//! by any the test pushes later (newline-delimited JSON, connection held open), and TokenReview
//! POSTs with the recorded review for the posted token. Every request is logged for assertions.
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// The collection paths the control plane lists and watches, with their fixture names.
pub const COLLECTIONS: [(&str, &str); 5] = [
    ("/api/v1/namespaces", "namespaces"),
    ("/api/v1/services", "services"),
    ("/api/v1/pods", "pods"),
    ("/apis/discovery.k8s.io/v1/endpointslices", "endpointslices"),
    (
        "/apis/policy.trellis.io/v1alpha1/trafficpolicies",
        "trafficpolicies",
    ),
];
const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

pub fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/k8s")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

type Body = BoxBody<Bytes, Infallible>;

/// One watch event line, with the resourceVersion of its object.
#[derive(Clone)]
struct Event {
    path: String,
    resource_version: u64,
    line: String,
}

#[derive(Default)]
struct Log {
    events: Vec<Event>,
}

struct State {
    lists: HashMap<String, Value>,
    /// Recorded TokenReview responses by token.
    reviews: HashMap<String, Value>,
    log: Mutex<Log>,
    live: broadcast::Sender<Event>,
    requests: Mutex<Vec<String>>,
}

pub struct FakeApiServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeApiServer {
    /// Serves the recorded lists of every collection; `reviews` maps a token to the name of its
    /// recorded TokenReview response.
    pub async fn start(reviews: &[(&str, &str)]) -> FakeApiServer {
        let lists = (COLLECTIONS.iter())
            .map(|(path, name)| {
                let list = serde_json::from_str(&fixture(&format!("{name}.json"))).unwrap();
                (path.to_string(), list)
            })
            .collect();
        let reviews = (reviews.iter())
            .map(|(token, name)| {
                (
                    token.to_string(),
                    serde_json::from_str(&fixture(name)).unwrap(),
                )
            })
            .collect();
        let state = Arc::new(State {
            lists,
            reviews,
            log: Mutex::new(Log::default()),
            live: broadcast::channel(64).0,
            requests: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept_state = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApiServer { addr, state, task }
    }

    /// A kube client talking plain HTTP to this fake.
    pub fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.addr).parse().unwrap();
        kube::Client::try_from(kube::Config::new(url)).unwrap()
    }

    /// A kubeconfig file content that points at this fake.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: \"http://{}\"}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n",
            self.addr
        )
    }

    /// Replays a recorded watch stream (`.jsonl`) on the collection at `path`: open watches get
    /// the events now, later watches from an older resourceVersion get them too.
    pub fn replay(&self, path: &str, recording: &str) {
        let mut log = self.state.log.lock().unwrap();
        for line in fixture(recording).lines().filter(|l| !l.trim().is_empty()) {
            let event: Value = serde_json::from_str(line).unwrap();
            let rv = event["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap();
            let event = Event {
                path: path.to_string(),
                resource_version: rv.parse().unwrap(),
                line: format!("{line}\n"),
            };
            log.events.push(event.clone());
            let _ = self.state.live.send(event);
        }
    }

    /// The requests served so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    state
        .requests
        .lock()
        .unwrap()
        .push(format!("{} {}", req.method(), req.uri()));
    if req.method() == Method::POST && path == TOKEN_REVIEWS {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        return token_review(state, &body);
    }
    let Some(list) = state.lists.get(&path) else {
        return json(StatusCode::NOT_FOUND, not_found(&path));
    };
    let selector = query.get("labelSelector").cloned();
    if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
        let since: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        return watch(state, path, since, selector);
    }
    let mut list = list.clone();
    if let (Some(selector), Some(items)) = (selector, list["items"].as_array_mut()) {
        items.retain(|item| matches_selector(item, &selector));
    }
    json(StatusCode::OK, list.to_string())
}

fn watch(state: &State, path: String, since: u64, selector: Option<String>) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Event>(64);
    let (backlog, mut live) = {
        let log = state.log.lock().unwrap();
        (log.events.clone(), state.live.subscribe())
    };
    let wanted = move |e: &Event| {
        e.path == path
            && e.resource_version > since
            && selector.as_ref().is_none_or(|s| {
                let event: Value = serde_json::from_str(&e.line).unwrap();
                event["type"] == "BOOKMARK" || matches_selector(&event["object"], s)
            })
    };
    tokio::spawn(async move {
        for event in backlog.into_iter().filter(&wanted) {
            if tx.send(event).await.is_err() {
                return;
            }
        }
        while let Ok(event) = live.recv().await {
            if wanted(&event) && tx.send(event).await.is_err() {
                return;
            }
        }
    });
    let frames = ReceiverStream::new(rx).map(|e| Ok(Frame::data(Bytes::from(e.line))));
    Response::builder()
        .header("content-type", "application/json")
        .body(StreamBody::new(frames).boxed())
        .unwrap()
}

fn token_review(state: &State, body: &[u8]) -> Response<Body> {
    let review: Value = serde_json::from_slice(body).unwrap();
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let Some(recorded) = state.reviews.get(token) else {
        // An unknown token: what the API server says about a garbage token.
        let mut answer =
            serde_json::from_str::<Value>(&fixture("tokenreview-reject.json")).unwrap();
        answer["spec"] = review["spec"].clone();
        return json(StatusCode::CREATED, answer.to_string());
    };
    let mut answer = recorded.clone();
    answer["spec"] = review["spec"].clone();
    json(StatusCode::CREATED, answer.to_string())
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap()
}

fn not_found(path: &str) -> String {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("the server could not find the requested resource ({path})"),
        "reason": "NotFound", "details": {}, "code": 404
    })
    .to_string()
}

/// `k=v[,k2=v2]` equality selectors only (what the control plane sends).
fn matches_selector(object: &Value, selector: &str) -> bool {
    selector.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => object["metadata"]["labels"][k].as_str() == Some(v),
        None => false,
    })
}

fn parse_query(query: &str) -> HashMap<String, String> {
    (query.split('&'))
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}
