//! The serving front end (`hams run --serve ADDR`): the graph as one model
//! under the Open Inference Protocol (KServe v2), over HTTP/JSON ([`http`])
//! and gRPC ([`grpc`]) on the same port.
//!
//! A request enters the same durable source log as every other source, in
//! the partition of its sequence (`sequence_id`, else round robin). Its
//! answer goes out only once its result is released, so no failover can
//! change an answer a client has seen. A request `id` makes it idempotent:
//! the id is logged with the request, and a retry with the same id (after a
//! timeout, a failover or a process restart) waits for, or reads back, the
//! same answer; the request never runs twice.

mod forward;
mod grpc;
mod http;
mod request;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use hams_operators::ops::answers;
use hams_storage::{Cf, Log, OutputRecord, Request, Store, Values};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::def::ElemType;
use crate::graph::{Graph, Input};
pub(crate) use request::Inference;

/// The target of the request spans (`hams.infer` and its `admit`, `log`,
/// `forward` and `release` children), which `OTEL_EXPORTER_OTLP_ENDPOINT` exports.
pub const TRACE_TARGET: &str = "hams::trace";

/// How long a request waits for its answer unless it says (`timeout`, µs).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body or gRPC message.
const MAX_BODY: usize = 64 << 20;

/// The front end's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests waiting to be logged, per partition, beyond which clients get 429.
    pub queue: usize,
    /// A recovery holding releases longer than this turns new requests away with 503.
    pub hold: Duration,
    /// A session without a request for this long is ended (its state freed
    /// on primary and backup); `None`: sessions end only when a client ends them.
    pub session_ttl: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            queue: 1024,
            hold: Duration::from_secs(1),
            session_ttl: Some(Duration::from_secs(600)),
        }
    }
}

/// What the worker tells a client once its request is logged.
pub(crate) type Logged = std::result::Result<(u64, oneshot::Receiver<OutputRecord>), String>;

/// Clients that sent an id already in flight: told where it was logged.
type Followers = Vec<oneshot::Sender<(u32, u64)>>;

/// Ids queued but not yet logged, with the requests that came again meanwhile.
type Inflight = Arc<Mutex<HashMap<String, Followers>>>;

/// A request on its way into the log.
pub(crate) struct Pending {
    /// The request in hams's wire form.
    pub(crate) bytes: Vec<u8>,
    /// The client's id, logged with it.
    pub(crate) id: Option<String>,
    /// Told where the request was logged, with the receiver of its answer
    /// (none for the front end's own requests: a session's idle expiry).
    pub(crate) reply: Option<oneshot::Sender<Logged>>,
    /// Holds the id in flight until the worker logged the request or
    /// dropped it (its client gone): a retry meanwhile follows this one
    /// instead of logging the request twice.
    pub(crate) lead: Option<Lead>,
}

impl Pending {
    /// The request is logged at `(partition, offset)`: its client, and any
    /// that sent the same id meanwhile, learn where.
    pub(crate) fn logged(mut self, partition: u32, offset: u64) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(Ok((offset, answers::wait(partition, offset))));
        }
        if let Some(lead) = self.lead.as_mut() {
            lead.at = Some((partition, offset));
        }
    }
}

/// What a process serves: its partitions (`first..`, of `total`), their
/// queues, the store its answers are read back from, and where the other
/// processes serve (by process index), for the requests of their partitions.
struct Serving {
    peers: Vec<String>,
    first: u32,
    total: u32,
    queues: Vec<Mutex<VecDeque<Pending>>>,
    /// Per partition: its open sessions and when each last had a request.
    open: Vec<Mutex<Sessions>>,
    store: Arc<Store>,
}

/// A partition's open sessions, for their idle expiry.
#[derive(Default)]
struct Sessions {
    last: HashMap<u64, Instant>,
    swept: Option<Instant>,
}

impl Sessions {
    /// Notes a request queued for `session` (which `end`s it, or not).
    fn touch(&mut self, session: u64, end: bool, now: Instant) {
        if end {
            self.last.remove(&session);
        } else {
            self.last.insert(session, now);
        }
    }

    /// The sessions idle longer than `ttl` (looked for about once a second), now closed.
    fn expire(&mut self, ttl: Duration, now: Instant) -> Vec<u64> {
        if self.swept.is_some_and(|t| now.duration_since(t) < ttl.min(Duration::from_secs(1))) {
            return Vec::new();
        }
        self.swept = Some(now);
        let idle: Vec<u64> = self
            .last
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= ttl)
            .map(|(s, _)| *s)
            .collect();
        for s in &idle {
            self.last.remove(s);
        }
        idle
    }
}

/// The front end of one process: its partitions' queues and what the
/// handlers of both protocols need to answer.
pub struct Front {
    addr: String,
    limits: Limits,
    /// Set once, when the process's store is open.
    serving: OnceLock<Serving>,
    /// Ids queued but not yet logged: later arrivals with the same id wait for the first.
    inflight: Inflight,
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
            .field("limits", &self.limits)
            .finish()
    }
}

/// Why a request gets no answer: a status (HTTP's, mapped to a gRPC code
/// for gRPC clients), a message, and when to retry if it is worth it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    /// Seconds after which a retry may succeed (429, 503).
    pub(crate) retry_after: Option<u64>,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Refusal::new(StatusCode::BAD_REQUEST, message)
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Refusal::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }

    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

/// The model's answer, as both protocols send it.
pub(crate) enum Output {
    F32(Vec<f32>),
    Int32(Vec<u32>),
}

impl Output {
    fn of(rec: OutputRecord) -> Result<Output, Refusal> {
        match rec.outcome {
            Ok(Values::F32(v)) => Ok(Output::F32(v)),
            Ok(Values::Tokens(t)) => Ok(Output::Int32(t)),
            Err(e) => Err(Refusal::bad(format!("{:?} at {}: {}", e.kind, e.node, e.message))),
        }
    }

    pub(crate) fn datatype(&self) -> &'static str {
        match self {
            Output::F32(_) => "FP32",
            Output::Int32(_) => "INT32",
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Output::F32(v) => v.len(),
            Output::Int32(v) => v.len(),
        }
    }

    /// The elements, little-endian (the binary and raw forms of both protocols).
    pub(crate) fn le_bytes(&self) -> Vec<u8> {
        match self {
            Output::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Output::Int32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

impl Front {
    /// A front end for `graph` that will listen on `addr` (`HOST:PORT`).
    pub fn new(addr: &str, graph: &Graph, limits: Limits) -> Arc<Front> {
        let node_out = |i: &Input| match i {
            Input::Source => graph.source.shape.iter().product(),
            Input::Node(n) => graph.nodes[*n].spec.output_len,
        };
        Arc::new(Front {
            addr: addr.to_string(),
            limits,
            serving: OnceLock::new(),
            inflight: Inflight::default(),
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

    /// Where process `process` serves, as the others reach it: its hostfile
    /// host (`addresses`, one `host:port` per process), the serve port + `process`.
    pub(crate) fn peer_address(&self, process: usize, addresses: &[String]) -> crate::error::Result<String> {
        let own = self.address(process)?;
        let port = own.rsplit_once(':').map_or("", |(_, p)| p);
        Ok(match addresses.get(process).and_then(|a| a.rsplit_once(':')) {
            Some((host, _)) => format!("{host}:{port}"),
            None => own,
        })
    }

    /// Up to `max` requests queued for `partition`, skipping those whose
    /// clients went away before they were logged (cancelled: never run);
    /// then an end for each of its sessions idle past the TTL.
    pub(crate) fn take(&self, partition: u32, max: usize) -> Vec<Pending> {
        let Some((s, i)) = self.slot(partition) else { return Vec::new() };
        let mut q = s.queues[i].lock().expect("poisoned");
        let mut out = Vec::new();
        while out.len() < max {
            match q.pop_front() {
                Some(p) if p.reply.as_ref().is_some_and(|r| r.is_closed()) => {}
                Some(p) => out.push(p),
                None => break,
            }
        }
        if let Some(ttl) = self.limits.session_ttl {
            // Under the queue's lock: no request of the session can slip in between.
            for session in s.open[i].lock().expect("poisoned").expire(ttl, Instant::now()) {
                tracing::info!(session, ?ttl, "ending an idle session");
                out.push(Pending {
                    bytes: self.expiry(session).encode_binary(),
                    id: None,
                    reply: None,
                    lead: None,
                });
            }
        }
        out
    }

    /// The request that ends an idle `session`: a last step on zeros, logged
    /// and replicated like any other, so its state goes on primary and backup
    /// alike (its result is released to the output topic, for no client).
    fn expiry(&self, session: u64) -> Request {
        let n: usize = self.input.1.iter().product();
        Request {
            session: Some(session),
            start: false,
            end: true,
            input: if self.input.0 == "INT32" {
                Values::Tokens(vec![0; n])
            } else {
                Values::F32(vec![0.0; n])
            },
        }
    }

    /// What this process serves and `partition`'s index in it, if it is this process's.
    fn slot(&self, partition: u32) -> Option<(&Serving, usize)> {
        let s = self.serving.get()?;
        let i = partition.checked_sub(s.first)? as usize;
        (i < s.queues.len()).then_some((s, i))
    }

    fn queue(&self, partition: u32) -> Option<&Mutex<VecDeque<Pending>>> {
        self.slot(partition).map(|(s, i)| &s.queues[i])
    }

    /// No new requests from here on (the run drains); those not yet logged are refused.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for q in self.serving.get().into_iter().flat_map(|s| &s.queues) {
            q.lock().expect("poisoned").clear();
        }
    }

    /// Ready for requests: started, not stopping, and no recovery holding releases.
    fn ready(&self) -> bool {
        self.serving.get().is_some() && !self.stopping.load(Ordering::Relaxed) && answers::held_for().is_none()
    }

    fn known(&self, name: &str) -> Result<(), Refusal> {
        if name == self.model {
            Ok(())
        } else {
            Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!("unknown model {name:?}: this server serves {:?}", self.model),
            ))
        }
    }

    /// The shape of the model's input, with -1 for the batch.
    fn input_shape(&self) -> Vec<i64> {
        std::iter::once(-1).chain(self.input.1.iter().map(|d| *d as i64)).collect()
    }

    /// Answers one inference request of either protocol, within `deadline`
    /// (the sooner of the request's `timeout` and the transport's).
    pub(crate) async fn infer(&self, req: &Inference, deadline: Option<Duration>) -> Result<Output, Refusal> {
        let span = tracing::Span::current();
        if let Some(id) = &req.id {
            span.record("id", id.as_str());
        }
        let request = tracing::info_span!(target: TRACE_TARGET, "admit").in_scope(|| request::convert(self, req))?;
        if let Some(s) = request.session {
            span.record("sequence_id", s);
        }
        let timeout = [req.timeout(), deadline].into_iter().flatten().min().unwrap_or(DEFAULT_TIMEOUT);
        match tokio::time::timeout(timeout, self.answer_of(req.id.clone(), request, timeout)).await {
            Ok(answer) => Output::of(answer?),
            Err(_) => {
                let hint = if req.id.is_some() {
                    "; retry with the same id for its answer"
                } else {
                    ""
                };
                Err(Refusal::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("no answer within {timeout:?}{hint}"),
                ))
            }
        }
    }

    /// The released result of `request`, from the process whose partition it
    /// belongs to (this one, or another it is forwarded to).
    async fn answer_of(&self, id: Option<String>, request: Request, timeout: Duration) -> Result<OutputRecord, Refusal> {
        let serving = self.serving.get().ok_or_else(|| Refusal::unavailable("starting").retry_after(1))?;
        let partition = match (request.session, id.as_deref()) {
            (Some(s), _) => (s % serving.total as u64) as u32,
            // An id always lands in one partition: its retries find it there, from any process.
            (None, Some(id)) => (fnv(id.as_bytes()) % serving.total as u64) as u32,
            (None, None) => serving.first + (self.next.fetch_add(1, Ordering::Relaxed) % serving.queues.len().max(1) as u64) as u32,
        };
        if self.queue(partition).is_none() {
            let owner = partition as usize / serving.queues.len().max(1);
            return forward::to_owner(self, partition, id, &request, timeout)
                .instrument(tracing::info_span!(target: TRACE_TARGET, "forward", partition, owner))
                .await;
        }
        self.answer_here(partition, id, request).await
    }

    /// The released result of `request` in this process's `partition`: logged
    /// once per id, answered once released.
    async fn answer_here(&self, partition: u32, id: Option<String>, request: Request) -> Result<OutputRecord, Refusal> {
        let serving = self.serving.get().ok_or_else(|| Refusal::unavailable("starting").retry_after(1))?;
        let store = &serving.store;
        if let Some(id) = &id {
            if let Some((p, o)) = hams_storage::served::logged_at(store, id).map_err(Refusal::internal)? {
                return self.released(store, p, o).await;
            }
            let follow = {
                let mut inflight = self.inflight.lock().expect("poisoned");
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
                    .map_err(|_| Refusal::unavailable("the first request with this id was not logged; retry").retry_after(1))?;
                return self.released(store, p, o).await;
            }
        }
        // From here this request leads its id, until it is logged or dropped.
        let lead = id.map(|id| Lead {
            inflight: self.inflight.clone(),
            id,
            at: None,
        });
        if self.stopping.load(Ordering::Relaxed) {
            return Err(Refusal::unavailable("the service is stopping"));
        }
        if let Some(held) = answers::held_for().filter(|h| *h > self.limits.hold) {
            return Err(Refusal::unavailable(format!("a recovery has held results for {} ms; retry", held.as_millis())).retry_after(1));
        }
        let Some((_, i)) = self.slot(partition) else {
            return Err(Refusal::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!("partition {partition} is served by another process of the cluster"),
            ));
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut q = serving.queues[i].lock().expect("poisoned");
            if q.len() >= self.limits.queue {
                return Err(Refusal::new(StatusCode::TOO_MANY_REQUESTS, "the admission queue is full; retry later").retry_after(1));
            }
            if let Some(session) = request.session {
                serving.open[i]
                    .lock()
                    .expect("poisoned")
                    .touch(session, request.end, Instant::now());
            }
            q.push_back(Pending {
                bytes: request.encode_binary(),
                id: lead.as_ref().map(|l| l.id.clone()),
                reply: Some(tx),
                lead,
            });
        }
        // Queued until the worker's next batch is durable in the source log.
        let logged = rx
            .instrument(tracing::info_span!(target: TRACE_TARGET, "log", partition))
            .await
            .map_err(|_| Refusal::unavailable("the service stopped before logging the request"))?;
        let (offset, answer) = logged.map_err(Refusal::internal)?;
        // Every model, then the backups holding what it depends on, then the release.
        answer
            .instrument(tracing::info_span!(target: TRACE_TARGET, "release", partition, offset))
            .await
            .map_err(|_| Refusal::unavailable("the service stopped before the answer was released; retry with the same id"))
    }

    /// The answer of the request logged at `(p, o)`: read back if released, else awaited.
    async fn released(&self, store: &Arc<Store>, p: u32, o: u64) -> Result<OutputRecord, Refusal> {
        if self.queue(p).is_none() {
            return Err(Refusal::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!("this id was logged in partition {p}, served by another process"),
            ));
        }
        // Wait first, then look: a release in between is then seen one way or the other.
        let rx = answers::wait(p, o);
        if let Some(at) = hams_storage::served::answer_at(store, p, o).map_err(Refusal::internal)? {
            drop(rx);
            answers::prune(p, o);
            return match Log::new(store.clone(), Cf::Output)
                .read::<OutputRecord>(p, at, 1)
                .map_err(Refusal::internal)?
                .pop()
            {
                Some((_, rec)) if rec.offset == o => Ok(rec),
                _ => Err(Refusal::new(
                    StatusCode::GONE,
                    "this id's answer is older than the output topic keeps (--retain-outputs)",
                )),
            };
        }
        rx.await
            .map_err(|_| Refusal::unavailable("the service stopped before the answer was released; retry with the same id"))
    }
}

/// FNV-1a: a hash that every process computes alike.
pub(crate) fn fnv(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
}

/// The first request in flight with an id: when dropped (logged, refused,
/// or its client gone before it was logged) the id leaves the in-flight
/// set, and the requests that came with the same id meanwhile learn where
/// it was logged, if it was.
pub(crate) struct Lead {
    inflight: Inflight,
    id: String,
    at: Option<(u32, u64)>,
}

impl Drop for Lead {
    fn drop(&mut self) {
        let followers = self.inflight.lock().expect("poisoned").remove(&self.id).unwrap_or_default();
        if let Some(at) = self.at {
            for f in followers {
                let _ = f.send(at);
            }
        }
    }
}

/// What the front end makes of an HTTP inference body before logging it:
/// the request, or the 4xx and its reason. `json_length` is the binary
/// tensor extension's `Inference-Header-Content-Length`. (For fuzzing.)
pub fn check_http(front: &Front, json_length: Option<&[u8]>, body: &[u8]) -> Result<Request, (u16, String)> {
    let refused = |r: Refusal| (r.status.as_u16(), r.message);
    let req = http::parse(json_length, body).map_err(refused)?;
    request::convert(front, &req).map_err(refused)
}

/// The same for a gRPC `ModelInferRequest` message. (For fuzzing.)
pub fn check_grpc(front: &Front, message: &[u8]) -> Result<Request, (u16, String)> {
    let refused = |r: Refusal| (r.status.as_u16(), r.message);
    let req = grpc::decode(message).map_err(refused)?;
    request::convert(front, &req).map_err(refused)
}

/// Starts serving `front` for this process's `partitions` (of `total`),
/// reading answers back from `store`; returns the bound address.
pub(crate) fn start(
    front: &Arc<Front>,
    addr: &str,
    store: Arc<Store>,
    partitions: &[u32],
    total: u32,
    peers: Vec<String>,
) -> std::io::Result<SocketAddr> {
    let serving = Serving {
        peers,
        first: partitions.first().copied().unwrap_or(0),
        total: total.max(1),
        queues: partitions.iter().map(|_| Mutex::new(VecDeque::new())).collect(),
        open: partitions.iter().map(|_| Mutex::new(Sessions::default())).collect(),
        store,
    };
    if front.serving.set(serving).is_err() {
        return Err(std::io::Error::other("the front end is already serving"));
    }
    answers::enable();
    // gRPC (HTTP/2, `application/grpc`) and HTTP/JSON share the port.
    // (tonic's router brings a fallback of its own: ours replaces it after the merge.)
    let app = http::router(front.clone())
        .merge(grpc::router(front.clone()))
        .merge(forward::router(front.clone()))
        .merge(hams_operators::metrics::router())
        .fallback(http::not_found);
    hams_operators::metrics::serve_http("hams-serve", addr, 2, app)
}
