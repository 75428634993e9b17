//! A FAKE Kubernetes API server for tests: plain HTTP on 127.0.0.1:0, replaying recorded API
//! responses from `tests/fixtures/k8s/`. It is not a cluster: it keeps one current copy of every
//! object (the recorded `*List` documents, then whatever the test replays or applies), answers
//! list requests from it (filtered by an equality `labelSelector`, as the API server would),
//! watch requests (`?watch=true&resourceVersion=N`) with the events newer than N followed by any
//! that happen later (newline-delimited JSON, connection held open), TokenReview POSTs with the
//! recorded review for the posted token, and status PATCHes
//! (`PATCH .../namespaces/<ns>/<plural>/<name>/status`, JSON merge patch) the way the status
//! subresource does: only `status` changes, a `metadata.resourceVersion` in the patch is a
//! precondition (409 when stale), the object gets a new resourceVersion and watchers a MODIFIED
//! event. Every request and every status patch is logged for assertions. The Gateway API
//! collections start empty unless a test gives their lists. ConfigMaps (`CONFIG_MAPS`, empty at
//! start) answer single-object GETs (404 when absent, as `get_opt` expects) and server-side
//! apply PATCHes (`application/apply-patch+yaml` with a `fieldManager`): the applied fields are
//! merged into the object, which is created when absent.
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
pub const COLLECTIONS: [(&str, &str); 7] = [
    ("/api/v1/namespaces", "namespaces"),
    ("/api/v1/services", "services"),
    ("/api/v1/pods", "pods"),
    ("/apis/discovery.k8s.io/v1/endpointslices", "endpointslices"),
    (
        "/apis/policy.trellis.io/v1alpha1/trafficpolicies",
        "trafficpolicies",
    ),
    (HTTP_ROUTES, "httproutes"),
    (GRPC_ROUTES, "grpcroutes"),
];
pub const TRAFFIC_POLICIES: &str = "/apis/policy.trellis.io/v1alpha1/trafficpolicies";
pub const HTTP_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
pub const GRPC_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/grpcroutes";
pub const CONFIG_MAPS: &str = "/api/v1/configmaps";
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

/// One collection: its list document's `apiVersion` and `kind`, and its objects now.
struct Collection {
    api_version: Value,
    kind: Value,
    items: Vec<Value>,
}

/// What the fake holds: like etcd, one resourceVersion counter for everything.
struct Objects {
    collections: HashMap<String, Collection>,
    events: Vec<Event>,
    resource_version: u64,
}

/// A status PATCH the fake accepted: the collection path, namespace, name and the patch body.
#[derive(Debug, Clone)]
pub struct StatusPatch {
    pub collection: String,
    pub namespace: String,
    pub name: String,
    pub body: Value,
}

struct State {
    objects: Mutex<Objects>,
    /// Recorded TokenReview responses by token.
    reviews: HashMap<String, Value>,
    live: broadcast::Sender<Event>,
    requests: Mutex<Vec<String>>,
    patches: Mutex<Vec<StatusPatch>>,
    /// Status PATCHes still to be answered with 500 (a failing API server).
    failing_patches: Mutex<usize>,
}

pub struct FakeApiServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

fn object_key(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (text(&meta["namespace"]), text(&meta["name"]))
}

impl Objects {
    fn next_version(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    /// Records `event` (its object already stamped) and applies it to the collection.
    fn record(&mut self, path: &str, event: &Value, live: &broadcast::Sender<Event>) {
        let object = &event["object"];
        if let Some(collection) = self.collections.get_mut(path) {
            let key = object_key(object);
            let at = collection.items.iter().position(|o| object_key(o) == key);
            match (event["type"].as_str(), at) {
                (Some("ADDED" | "MODIFIED"), Some(i)) => collection.items[i] = object.clone(),
                (Some("ADDED" | "MODIFIED"), None) => collection.items.push(object.clone()),
                (Some("DELETED"), Some(i)) => {
                    collection.items.remove(i);
                }
                _ => {}
            }
        }
        let event = Event {
            path: path.to_string(),
            resource_version: self.resource_version,
            line: format!("{event}\n"),
        };
        self.events.push(event.clone());
        let _ = live.send(event);
    }
}

impl FakeApiServer {
    /// Serves the recorded lists of every collection; `reviews` maps a token to the name of its
    /// recorded TokenReview response.
    pub async fn start(reviews: &[(&str, &str)]) -> FakeApiServer {
        Self::start_with(reviews, &[]).await
    }

    /// As `start`, with some collections' list documents given by the test (`(path, list)`); a
    /// path given with `Value::Null` is not served at all (404, as for a CRD not installed).
    pub async fn start_with(reviews: &[(&str, &str)], lists: &[(&str, Value)]) -> FakeApiServer {
        let mut collections = HashMap::new();
        let mut resource_version = 0;
        for (path, name) in COLLECTIONS {
            let given = lists
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, l)| l.clone());
            let list: Value = match given {
                Some(Value::Null) => continue,
                Some(list) => list,
                None if path == HTTP_ROUTES || path == GRPC_ROUTES => {
                    let kind = if path == HTTP_ROUTES {
                        "HTTPRouteList"
                    } else {
                        "GRPCRouteList"
                    };
                    serde_json::json!({
                        "apiVersion": "gateway.networking.k8s.io/v1", "kind": kind,
                        "metadata": {"resourceVersion": "1000"}, "items": []
                    })
                }
                None => serde_json::from_str(&fixture(&format!("{name}.json"))).unwrap(),
            };
            let rv: u64 = list["metadata"]["resourceVersion"]
                .as_str()
                .map_or(0, |v| v.parse().unwrap());
            resource_version = resource_version.max(rv);
            collections.insert(
                path.to_string(),
                Collection {
                    api_version: list["apiVersion"].clone(),
                    kind: list["kind"].clone(),
                    items: list["items"].as_array().cloned().unwrap_or_default(),
                },
            );
        }
        collections.insert(
            CONFIG_MAPS.to_string(),
            Collection {
                api_version: "v1".into(),
                kind: "ConfigMapList".into(),
                items: Vec::new(),
            },
        );
        let reviews = (reviews.iter())
            .map(|(token, name)| {
                (
                    token.to_string(),
                    serde_json::from_str(&fixture(name)).unwrap(),
                )
            })
            .collect();
        let state = Arc::new(State {
            objects: Mutex::new(Objects {
                collections,
                events: Vec::new(),
                resource_version,
            }),
            reviews,
            live: broadcast::channel(1024).0,
            requests: Mutex::new(Vec::new()),
            patches: Mutex::new(Vec::new()),
            failing_patches: Mutex::new(0),
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
    /// the events now, later watches from an older resourceVersion get them too. Each event's
    /// object gets the next resourceVersion, as the API server would assign it.
    pub fn replay(&self, path: &str, recording: &str) {
        let mut objects = self.state.objects.lock().unwrap();
        for line in fixture(recording).lines().filter(|l| !l.trim().is_empty()) {
            let mut event: Value = serde_json::from_str(line).unwrap();
            let rv = objects.next_version();
            event["object"]["metadata"]["resourceVersion"] = rv.to_string().into();
            objects.record(path, &event, &self.state.live);
        }
    }

    /// Creates or replaces an object in the collection at `path`, as `kubectl apply` would:
    /// a new resourceVersion, `generation` raised when the spec changed, the status kept.
    pub fn apply(&self, path: &str, mut object: Value) {
        let mut objects = self.state.objects.lock().unwrap();
        let key = object_key(&object);
        let current = (objects.collections[path].items.iter())
            .find(|o| object_key(o) == key)
            .cloned();
        let kind = match &current {
            Some(current) => {
                let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
                let changed = current["spec"] != object["spec"];
                object["metadata"]["generation"] = (generation + i64::from(changed)).into();
                object["metadata"]["uid"] = current["metadata"]["uid"].clone();
                object["metadata"]["creationTimestamp"] =
                    current["metadata"]["creationTimestamp"].clone();
                object["status"] = current["status"].clone();
                "MODIFIED"
            }
            None => "ADDED",
        };
        object["metadata"]["resourceVersion"] = objects.next_version().to_string().into();
        let event = serde_json::json!({"type": kind, "object": object});
        objects.record(path, &event, &self.state.live);
    }

    /// The object `namespace/name` in the collection at `path` as it is now.
    pub fn object(&self, path: &str, namespace: &str, name: &str) -> Option<Value> {
        let objects = self.state.objects.lock().unwrap();
        let key = (namespace.to_owned(), name.to_owned());
        (objects.collections[path].items.iter())
            .find(|o| object_key(o) == key)
            .cloned()
    }

    /// The requests served so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The status PATCHes applied so far (failed ones are not recorded).
    pub fn status_patches(&self) -> Vec<StatusPatch> {
        self.state.patches.lock().unwrap().clone()
    }

    /// Answers the next `n` status PATCHes with 500 Internal Server Error.
    pub fn fail_status_patches(&self, n: usize) {
        *self.state.failing_patches.lock().unwrap() = n;
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
    if req.method() == Method::PATCH && path.ends_with("/status") {
        let content_type = req.headers().get("content-type").cloned();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        return patch_status(state, &path, content_type, &body);
    }
    if let Some((collection, namespace, name)) = object_path(&path) {
        if req.method() == Method::GET {
            return get_object(state, &collection, &namespace, &name);
        }
        if req.method() == Method::PATCH {
            let content_type = req.headers().get("content-type").cloned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            return apply_object(state, &collection, &query, content_type, &body);
        }
    }
    let selector = query.get("labelSelector").cloned();
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let list = {
        let objects = state.objects.lock().unwrap();
        let Some(collection) = objects.collections.get(&path) else {
            return json(StatusCode::NOT_FOUND, not_found(&path));
        };
        serde_json::json!({
            "apiVersion": collection.api_version, "kind": collection.kind,
            "metadata": {"resourceVersion": objects.resource_version.to_string()},
            "items": collection.items,
        })
    };
    if watching {
        let since: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        return watch(state, path, since, selector);
    }
    let mut list = list;
    if let (Some(selector), Some(items)) = (selector, list["items"].as_array_mut()) {
        items.retain(|item| matches_selector(item, &selector));
    }
    json(StatusCode::OK, list.to_string())
}

/// `PATCH <group path>/namespaces/<ns>/<plural>/<name>/status` with a JSON merge patch.
fn patch_status(
    state: &State,
    path: &str,
    content_type: Option<hyper::header::HeaderValue>,
    body: &[u8],
) -> Response<Body> {
    let parts: Vec<&str> = path.split('/').collect();
    let n = parts.len();
    if n < 7 || parts[n - 5] != "namespaces" {
        return json(StatusCode::NOT_FOUND, not_found(path));
    }
    let (namespace, plural, name) = (parts[n - 4], parts[n - 3], parts[n - 2]);
    let collection = format!("{}/{plural}", parts[..n - 5].join("/"));
    if content_type.as_ref().and_then(|v| v.to_str().ok()) != Some("application/merge-patch+json") {
        return json(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            status_doc(415, "UnsupportedMediaType", "only merge patches"),
        );
    }
    {
        let mut failing = state.failing_patches.lock().unwrap();
        if *failing > 0 {
            *failing -= 1;
            return json(
                StatusCode::INTERNAL_SERVER_ERROR,
                status_doc(500, "InternalError", "etcdserver: request timed out"),
            );
        }
    }
    let patch: Value = serde_json::from_slice(body).unwrap();
    let mut objects = state.objects.lock().unwrap();
    let key = (namespace.to_owned(), name.to_owned());
    let Some(current) = (objects.collections.get(&collection))
        .and_then(|c| c.items.iter().find(|o| object_key(o) == key))
        .cloned()
    else {
        return json(StatusCode::NOT_FOUND, not_found(path));
    };
    let wanted_rv = &patch["metadata"]["resourceVersion"];
    if !wanted_rv.is_null() && *wanted_rv != current["metadata"]["resourceVersion"] {
        let message = format!(
            "Operation cannot be fulfilled on {plural} \"{name}\": the object has been \
             modified; please apply your changes to the latest version and try again"
        );
        return json(StatusCode::CONFLICT, status_doc(409, "Conflict", &message));
    }
    let mut object = current;
    // The status subresource ignores everything but status.
    let mut status = object["status"].take();
    merge(&mut status, &patch["status"]);
    object["status"] = status;
    object["metadata"]["resourceVersion"] = objects.next_version().to_string().into();
    let event = serde_json::json!({"type": "MODIFIED", "object": object});
    objects.record(&collection, &event, &state.live);
    state.patches.lock().unwrap().push(StatusPatch {
        collection,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        body: patch,
    });
    json(StatusCode::OK, object.to_string())
}

/// `<prefix>/namespaces/<ns>/<plural>/<name>` as (`<prefix>/<plural>`, ns, name).
fn object_path(path: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = path.split('/').collect();
    let n = parts.len();
    (n >= 7 && parts[n - 4] == "namespaces").then(|| {
        let collection = format!("{}/{}", parts[..n - 4].join("/"), parts[n - 2]);
        (collection, parts[n - 3].to_owned(), parts[n - 1].to_owned())
    })
}

fn get_object(state: &State, collection: &str, namespace: &str, name: &str) -> Response<Body> {
    let objects = state.objects.lock().unwrap();
    let key = (namespace.to_owned(), name.to_owned());
    match (objects.collections.get(collection))
        .and_then(|c| c.items.iter().find(|o| object_key(o) == key))
    {
        Some(object) => json(StatusCode::OK, object.to_string()),
        None => json(
            StatusCode::NOT_FOUND,
            not_found(&format!("{collection} {name}")),
        ),
    }
}

/// A server-side apply: the body's fields merged into the object (created when absent).
fn apply_object(
    state: &State,
    collection: &str,
    query: &HashMap<String, String>,
    content_type: Option<hyper::header::HeaderValue>,
    body: &[u8],
) -> Response<Body> {
    if content_type.as_ref().and_then(|v| v.to_str().ok()) != Some("application/apply-patch+yaml") {
        return json(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            status_doc(415, "UnsupportedMediaType", "only server-side apply here"),
        );
    }
    if !query.contains_key("fieldManager") {
        return json(
            StatusCode::BAD_REQUEST,
            status_doc(400, "BadRequest", "fieldManager is required for apply"),
        );
    }
    let applied: Value = serde_json::from_slice(body).unwrap();
    let mut objects = state.objects.lock().unwrap();
    let key = object_key(&applied);
    let Some(items) = objects.collections.get(collection).map(|c| &c.items) else {
        return json(StatusCode::NOT_FOUND, not_found(collection));
    };
    let (kind, mut object) = match items.iter().find(|o| object_key(o) == key) {
        Some(current) => ("MODIFIED", current.clone()),
        None => {
            let uid = format!("uid-{}-{}", key.0, key.1);
            let created = serde_json::json!({"metadata": {
                "uid": uid, "creationTimestamp": "2024-01-01T00:00:00Z"
            }});
            ("ADDED", created)
        }
    };
    merge(&mut object, &applied);
    object["metadata"]["resourceVersion"] = objects.next_version().to_string().into();
    let event = serde_json::json!({"type": kind, "object": object});
    objects.record(collection, &event, &state.live);
    json(StatusCode::OK, object.to_string())
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (k, v) in fields {
        if v.is_null() {
            target.remove(k);
        } else {
            merge(target.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn status_doc(code: u16, reason: &str, message: &str) -> String {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": {}, "code": code
    })
    .to_string()
}

fn watch(state: &State, path: String, since: u64, selector: Option<String>) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Event>(64);
    let (backlog, mut live) = {
        let objects = state.objects.lock().unwrap();
        (objects.events.clone(), state.live.subscribe())
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
