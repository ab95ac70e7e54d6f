//! The serving front end (`hams run --serve ADDR`): the graph as one model
//! under the Open Inference Protocol (KServe v2) over HTTP/JSON.
//!
//! A request enters the same durable source log as every other source, in
//! the partition of its sequence (`sequence_id`, else round robin). Its
//! answer goes out only once its result is released, so no failover can
//! change an answer a client has seen. A request `id` makes it idempotent:
//! the id is logged with the request, and a retry with the same id (after a
//! timeout, a failover or a process restart) waits for, or reads back, the
//! same answer; the request never runs twice.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hams_operators::ops::answers;
use hams_storage::schema::{answer_key, request_id_key};
use hams_storage::{Cf, Log, OutputRecord, Request, Store, Values};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::def::ElemType;
use crate::graph::{Graph, Input};

/// Requests waiting to be logged, per partition, beyond which clients get 429.
const QUEUE: usize = 1024;
/// How long a request waits for its answer unless it says (`timeout`, µs).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body.
const MAX_BODY: usize = 64 << 20;

/// What the worker tells a client once its request is logged.
pub(crate) type Logged = std::result::Result<(u64, oneshot::Receiver<OutputRecord>), String>;

/// Clients that sent an id already in flight: told where it was logged.
type Followers = Vec<oneshot::Sender<(u32, u64)>>;

/// A request on its way into the log.
pub(crate) struct Pending {
    /// The request in hams's wire form.
    pub(crate) bytes: Vec<u8>,
    /// The client's id, logged with it.
    pub(crate) id: Option<String>,
    /// Told where the request was logged, with the receiver of its answer.
    pub(crate) reply: oneshot::Sender<Logged>,
}

/// What a process serves: its partitions (`first..`, of `total`), their
/// queues, and the store its answers are read back from.
struct Serving {
    first: u32,
    total: u32,
    queues: Vec<Mutex<VecDeque<Pending>>>,
    store: Arc<Store>,
}

/// The front end of one process: its partitions' queues and what the HTTP
/// handlers need to answer.
pub struct Front {
    addr: String,
    /// Set once, when the process's store is open.
    serving: OnceLock<Serving>,
    /// Ids queued but not yet logged: later arrivals with the same id wait for the first.
    inflight: Mutex<HashMap<String, Followers>>,
    next: AtomicU64,
    stopping: AtomicBool,
    model: String,
    input: (&'static str, Vec<usize>),
    output_len: usize,
    sessions: bool,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("addr", &self.addr)
            .field("model", &self.model)
            .finish()
    }
}

impl Front {
    /// A front end for `graph` that will listen on `addr` (`HOST:PORT`).
    pub fn new(addr: &str, graph: &Graph) -> Arc<Front> {
        let node_out = |i: &Input| match i {
            Input::Source => graph.source.shape.iter().product(),
            Input::Node(n) => graph.nodes[*n].spec.output_len,
        };
        Arc::new(Front {
            addr: addr.to_string(),
            serving: OnceLock::new(),
            inflight: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            model: graph.name.clone(),
            input: (
                if graph.source.input == ElemType::Tokens { "INT32" } else { "FP32" },
                graph.source.shape.clone(),
            ),
            output_len: graph.sink.iter().map(node_out).sum(),
            sessions: graph.source.sessions > 0 || graph.nodes.iter().any(|n| n.spec.is_stateful()),
        })
    }

    /// Where process `process` serves: the given port + `process`.
    pub(crate) fn address(&self, process: usize) -> crate::error::Result<String> {
        use std::net::ToSocketAddrs;
        let bad = |why: String| crate::error::Error::Config(format!("--serve {}: {why}", self.addr));
        let mut sock = self
            .addr
            .to_socket_addrs()
            .map_err(|e| bad(e.to_string()))?
            .next()
            .ok_or_else(|| bad("the host has no address".into()))?;
        if sock.port() != 0 {
            let port = u16::try_from(sock.port() as usize + process).map_err(|_| bad("no port left for this process".into()))?;
            sock.set_port(port);
        }
        Ok(sock.to_string())
    }

    /// Up to `max` requests queued for `partition`.
    pub(crate) fn take(&self, partition: u32, max: usize) -> Vec<Pending> {
        let Some(q) = self.queue(partition) else { return Vec::new() };
        let mut q = q.lock().expect("poisoned");
        let n = q.len().min(max);
        q.drain(..n).collect()
    }

    fn queue(&self, partition: u32) -> Option<&Mutex<VecDeque<Pending>>> {
        let s = self.serving.get()?;
        s.queues.get(partition.checked_sub(s.first)? as usize)
    }

    /// No new requests from here on (the run drains); those not yet logged are refused.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for q in self.serving.get().into_iter().flat_map(|s| &s.queues) {
            q.lock().expect("poisoned").clear();
        }
    }
}

/// Starts serving `front` for this process's `partitions` (of `total`),
/// reading answers back from `store`; returns the bound address.
pub(crate) fn start(front: &Arc<Front>, addr: &str, store: Arc<Store>, partitions: &[u32], total: u32) -> std::io::Result<SocketAddr> {
    let serving = Serving {
        first: partitions.first().copied().unwrap_or(0),
        total: total.max(1),
        queues: partitions.iter().map(|_| Mutex::new(VecDeque::new())).collect(),
        store,
    };
    if front.serving.set(serving).is_err() {
        return Err(std::io::Error::other("the front end is already serving"));
    }
    answers::enable();
    let app = Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint (the Open Inference Protocol's are under /v2)",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(front.clone());
    hams_operators::metrics::serve_http("hams-serve", addr, 2, app)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn server_metadata() -> Json<Value> {
    Json(json!({ "name": "hams", "version": env!("CARGO_PKG_VERSION"), "extensions": ["sequence"] }))
}

async fn ready(State(front): State<Arc<Front>>) -> StatusCode {
    if front.stopping.load(Ordering::Relaxed) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

fn known(front: &Front, name: &str) -> std::result::Result<(), Box<Response>> {
    if name == front.model {
        Ok(())
    } else {
        Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("unknown model {name:?}: this server serves {:?}", front.model),
        )))
    }
}

async fn model_ready(State(front): State<Arc<Front>>, Path(name): Path<String>) -> Response {
    match known(&front, &name) {
        Ok(()) => ready(State(front)).await.into_response(),
        Err(e) => *e,
    }
}

async fn model_metadata(State(front): State<Arc<Front>>, Path(name): Path<String>) -> Response {
    if let Err(e) = known(&front, &name) {
        return *e;
    }
    let mut shape: Vec<i64> = vec![-1];
    shape.extend(front.input.1.iter().map(|d| *d as i64));
    Json(json!({
        "name": front.model,
        "versions": ["1"],
        "platform": "hams",
        "inputs": [{ "name": "INPUT", "datatype": front.input.0, "shape": shape }],
        "outputs": [{ "name": "OUTPUT", "datatype": "FP32", "shape": [-1, front.output_len] }],
    }))
    .into_response()
}

/// The parts of an OIP inference request hams reads.
#[derive(serde::Deserialize)]
struct InferRequest {
    id: Option<String>,
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
    inputs: Vec<Tensor>,
}

#[derive(serde::Deserialize)]
struct Tensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    /// The elements as JSON; absent when they come binary (`binary_data_size`).
    #[serde(default)]
    data: Value,
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
}

/// Header of the binary tensor extension: the length of the JSON part of the body.
const JSON_LENGTH: &str = "inference-header-content-length";

/// Splits a body of the binary tensor extension and puts each binary input's
/// elements (little-endian, as its datatype says) into its `data`.
fn binary_inputs(req: &mut InferRequest, mut rest: &[u8]) -> std::result::Result<(), String> {
    for t in &mut req.inputs {
        let Some(size) = t.parameters.get("binary_data_size") else {
            continue;
        };
        let size = size.as_u64().ok_or("binary_data_size must be a byte count")? as usize;
        if size > rest.len() {
            return Err(format!(
                "input {:?}: binary_data_size {size}, but {} bytes follow",
                t.name,
                rest.len()
            ));
        }
        let (bytes, more) = rest.split_at(size);
        rest = more;
        let width = match t.datatype.as_str() {
            "FP32" | "INT32" | "UINT32" => 4,
            "FP64" | "INT64" | "UINT64" => 8,
            other => return Err(format!("datatype {other}: the model's input is FP32 or INT32")),
        };
        if size % width != 0 {
            return Err(format!("input {:?}: {size} bytes are not whole {} elements", t.name, t.datatype));
        }
        let values = bytes.chunks_exact(width).map(|b| match (t.datatype.as_str(), b.len()) {
            ("FP32", _) => json!(f32::from_le_bytes(b.try_into().expect("4 bytes"))),
            ("INT32", _) => json!(i32::from_le_bytes(b.try_into().expect("4 bytes"))),
            ("UINT32", _) => json!(u32::from_le_bytes(b.try_into().expect("4 bytes"))),
            ("FP64", _) => json!(f64::from_le_bytes(b.try_into().expect("8 bytes"))),
            ("INT64", _) => json!(i64::from_le_bytes(b.try_into().expect("8 bytes"))),
            _ => json!(u64::from_le_bytes(b.try_into().expect("8 bytes"))),
        });
        t.data = Value::Array(values.collect());
    }
    if rest.is_empty() {
        Ok(())
    } else {
        Err(format!("{} bytes after the binary inputs", rest.len()))
    }
}

/// The elements of a tensor's `data`, flattened (OIP allows nesting).
fn flatten(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| flatten(x, out)),
        x => out.push(x.clone()),
    }
}

/// A client's request as hams's own, or why it is refused.
fn convert(front: &Front, req: &InferRequest) -> std::result::Result<Request, String> {
    let [t] = req.inputs.as_slice() else {
        return Err(format!("expected one input tensor, got {}", req.inputs.len()));
    };
    if t.name != "INPUT" {
        return Err(format!("unknown input {:?}: the model's input is \"INPUT\"", t.name));
    }
    let want: usize = front.input.1.iter().product();
    let count = t.shape.iter().try_fold(1i64, |n, d| if *d < 0 { None } else { n.checked_mul(*d) });
    if count != Some(want as i64) {
        return Err(format!(
            "shape {:?} does not hold one request of {:?} ({want} elements)",
            t.shape, front.input.1
        ));
    }
    let mut data = Vec::new();
    flatten(&t.data, &mut data);
    if data.len() != want {
        return Err(format!("{} elements in data, the shape says {want}", data.len()));
    }
    let input = match (front.input.0, t.datatype.as_str()) {
        ("FP32", "FP32" | "FP64") => Values::F32(
            data.iter()
                .map(|x| x.as_f64().map(|f| f as f32).filter(|f| f.is_finite()))
                .collect::<Option<_>>()
                .ok_or("FP32 data must be finite numbers")?,
        ),
        ("INT32", "INT32" | "INT64" | "UINT32" | "UINT64") => Values::Tokens(
            data.iter()
                .map(|x| x.as_u64().and_then(|t| u32::try_from(t).ok()))
                .collect::<Option<_>>()
                .ok_or("token data must be integers in 0..2^32")?,
        ),
        (want, got) => return Err(format!("datatype {got}: the model's input is {want}")),
    };
    let flag = |k: &str| req.parameters.get(k).and_then(Value::as_bool).unwrap_or(false);
    let session = match req.parameters.get("sequence_id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().filter(|s| *s > 0).ok_or("sequence_id must be an integer > 0")?),
    };
    let (start, end) = (flag("sequence_start"), flag("sequence_end"));
    if (start || end) && session.is_none() {
        return Err("sequence_start or sequence_end without a sequence_id".into());
    }
    if session.is_some() && !front.sessions {
        return Err("this model keeps no sequences: drop sequence_id".into());
    }
    Ok(Request {
        session,
        start,
        end,
        input,
    })
}

async fn infer(
    State(front): State<Arc<Front>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = known(&front, &name) {
        return *e;
    }
    // The binary tensor extension: a JSON header, then the inputs' bytes.
    let split = match headers
        .get(JSON_LENGTH)
        .map(|v| v.to_str().ok().and_then(|v| v.parse::<usize>().ok()))
    {
        None => body.len(),
        Some(Some(n)) if n <= body.len() => n,
        Some(_) => return error(StatusCode::BAD_REQUEST, format!("{JSON_LENGTH} is not a length within the body")),
    };
    let mut req: InferRequest = match serde_json::from_slice(&body[..split]) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not an inference request: {e}")),
    };
    if let Err(e) = binary_inputs(&mut req, &body[split..]) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let request = match convert(&front, &req) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let timeout = req
        .parameters
        .get("timeout")
        .and_then(Value::as_u64)
        .map_or(DEFAULT_TIMEOUT, Duration::from_micros);
    let answer = match tokio::time::timeout(timeout, answer_of(&front, req.id.clone(), request)).await {
        Ok(Ok(rec)) => rec,
        Ok(Err((status, e))) => return error(status, e),
        Err(_) => {
            let hint = if req.id.is_some() {
                "; retry with the same id for its answer"
            } else {
                ""
            };
            return error(StatusCode::GATEWAY_TIMEOUT, format!("no answer within {timeout:?}{hint}"));
        }
    };
    let mut out = json!({ "model_name": front.model, "model_version": "1" });
    if let Some(id) = &req.id {
        out["id"] = json!(id);
    }
    match answer.outcome {
        Ok(Values::F32(v)) => {
            out["outputs"] = json!([{ "name": "OUTPUT", "datatype": "FP32", "shape": [1, v.len()], "data": v }]);
            (StatusCode::OK, Json(out)).into_response()
        }
        Ok(Values::Tokens(t)) => {
            out["outputs"] = json!([{ "name": "OUTPUT", "datatype": "INT32", "shape": [1, t.len()], "data": t }]);
            (StatusCode::OK, Json(out)).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, format!("{:?} at {}: {}", e.kind, e.node, e.message)),
    }
}

type Failed = (StatusCode, String);

/// The released result of `request`: logged once per id, answered once released.
async fn answer_of(front: &Front, id: Option<String>, request: Request) -> std::result::Result<OutputRecord, Failed> {
    let unavailable = |m: &str| (StatusCode::SERVICE_UNAVAILABLE, m.to_string());
    let serving = front.serving.get().ok_or_else(|| unavailable("starting"))?;
    let store = &serving.store;
    if let Some(id) = &id {
        if let Some((p, o)) = store
            .get::<(u32, u64)>(Cf::Meta, &request_id_key(id))
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        {
            return released(front, store, p, o).await;
        }
        let follow = {
            let mut inflight = front.inflight.lock().expect("poisoned");
            match inflight.get_mut(id) {
                Some(followers) => {
                    let (tx, rx) = oneshot::channel();
                    followers.push(tx);
                    Some(rx)
                }
                None => {
                    inflight.insert(id.clone(), Vec::new());
                    None
                }
            }
        };
        if let Some(rx) = follow {
            let (p, o) = rx
                .await
                .map_err(|_| unavailable("the first request with this id was not logged; retry"))?;
            return released(front, store, p, o).await;
        }
    }
    if front.stopping.load(Ordering::Relaxed) {
        forget(front, id.as_deref(), None);
        return Err(unavailable("the service is stopping"));
    }
    let partition = match request.session {
        Some(s) => (s % serving.total as u64) as u32,
        None => serving.first + (front.next.fetch_add(1, Ordering::Relaxed) % serving.queues.len().max(1) as u64) as u32,
    };
    let Some(queue) = front.queue(partition) else {
        forget(front, id.as_deref(), None);
        return Err((
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "sequence {} belongs to partition {partition}, served by another process of the cluster",
                request.session.unwrap_or(0)
            ),
        ));
    };
    let (tx, rx) = oneshot::channel();
    {
        let mut q = queue.lock().expect("poisoned");
        if q.len() >= QUEUE {
            drop(q);
            forget(front, id.as_deref(), None);
            return Err((StatusCode::TOO_MANY_REQUESTS, "the admission queue is full; retry later".into()));
        }
        q.push_back(Pending {
            bytes: request.encode_binary(),
            id: id.clone(),
            reply: tx,
        });
    }
    let logged = rx.await.map_err(|_| unavailable("the service stopped before logging the request"));
    let (offset, answer) = match logged.and_then(|l| l.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))) {
        Ok(l) => l,
        Err(e) => {
            forget(front, id.as_deref(), None);
            return Err(e);
        }
    };
    forget(front, id.as_deref(), Some((partition, offset)));
    answer
        .await
        .map_err(|_| unavailable("the service stopped before the answer was released; retry with the same id"))
}

/// Drops `id` from the ids in flight, telling its followers where it was logged (if it was).
fn forget(front: &Front, id: Option<&str>, at: Option<(u32, u64)>) {
    let Some(id) = id else { return };
    let followers = front.inflight.lock().expect("poisoned").remove(id).unwrap_or_default();
    if let Some(at) = at {
        for f in followers {
            let _ = f.send(at);
        }
    }
}

/// The answer of the request logged at `(p, o)`: read back if released, else awaited.
async fn released(front: &Front, store: &Arc<Store>, p: u32, o: u64) -> std::result::Result<OutputRecord, Failed> {
    if front.queue(p).is_none() {
        return Err((
            StatusCode::MISDIRECTED_REQUEST,
            format!("this id was logged in partition {p}, served by another process"),
        ));
    }
    // Wait first, then look: a release in between is then seen one way or the other.
    let rx = answers::wait(p, o);
    let internal = |e: hams_storage::Error| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    if let Some(at) = store.get::<u64>(Cf::Meta, &answer_key(p, o)).map_err(internal)? {
        drop(rx);
        answers::prune(p, o);
        return match Log::new(store.clone(), Cf::Output)
            .read::<OutputRecord>(p, at, 1)
            .map_err(internal)?
            .pop()
        {
            Some((_, rec)) if rec.offset == o => Ok(rec),
            _ => Err((
                StatusCode::GONE,
                "this id's answer is older than the output topic keeps (--retain-outputs)".into(),
            )),
        };
    }
    rx.await.map_err(|_| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the service stopped before the answer was released; retry with the same id".to_string(),
        )
    })
}
