//! The Open Inference Protocol over HTTP/JSON, with the binary tensor
//! extension (tritonclient's default) for inputs and, when asked, outputs.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::request::decode_le;
use super::{Front, Inference, Output, Refusal, MAX_BODY, TRACE_TARGET};
use tracing::Instrument;

/// The span of one inference request, whichever protocol it came by.
pub(super) fn infer_span(protocol: &'static str, model: &str) -> tracing::Span {
    tracing::info_span!(
        target: TRACE_TARGET,
        "hams.infer",
        protocol,
        model,
        id = tracing::field::Empty,
        sequence_id = tracing::field::Empty,
        status = tracing::field::Empty,
    )
}

/// Header of the binary tensor extension: the length of the JSON part of the body.
const JSON_LENGTH: &str = "inference-header-content-length";

pub(super) fn router(front: Arc<Front>) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(front)
}

/// Paths served by neither protocol.
pub(super) async fn not_found() -> Response {
    refused(Refusal::new(
        StatusCode::NOT_FOUND,
        "no such endpoint (the Open Inference Protocol's are under /v2)",
    ))
}

pub(super) fn refused(r: Refusal) -> Response {
    let mut resp = (r.status, Json(json!({ "error": r.message }))).into_response();
    if let Some(s) = r.retry_after {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    resp
}

async fn server_metadata() -> Json<Value> {
    Json(json!({ "name": "hams", "version": env!("CARGO_PKG_VERSION"), "extensions": ["sequence", "binary_tensor_data"] }))
}

fn readiness(front: &Front) -> StatusCode {
    if front.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn ready(State(front): State<Arc<Front>>) -> StatusCode {
    readiness(&front)
}

async fn model_ready(State(front): State<Arc<Front>>, Path(name): Path<String>) -> Response {
    match front.known(&name) {
        Ok(()) => readiness(&front).into_response(),
        Err(e) => refused(e),
    }
}

async fn model_metadata(State(front): State<Arc<Front>>, Path(name): Path<String>) -> Response {
    if let Err(e) = front.known(&name) {
        return refused(e);
    }
    Json(json!({
        "name": front.model,
        "versions": ["1"],
        "platform": "hams",
        "inputs": [{ "name": "INPUT", "datatype": front.input.0, "shape": front.input_shape() }],
        "outputs": [{ "name": "OUTPUT", "datatype": "FP32", "shape": [-1, front.output_len] }],
    }))
    .into_response()
}

/// Splits a body of the binary tensor extension and puts each binary input's
/// elements into its `data`.
fn binary_inputs(req: &mut Inference, mut rest: &[u8]) -> Result<(), String> {
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
        t.data = decode_le(&t.name, &t.datatype, bytes)?;
    }
    if rest.is_empty() {
        Ok(())
    } else {
        Err(format!("{} bytes after the binary inputs", rest.len()))
    }
}

/// The request in a body: plain JSON, or (with the header giving the JSON
/// part's length) JSON then binary inputs.
pub(super) fn parse(json_length: Option<&[u8]>, body: &[u8]) -> Result<Inference, Refusal> {
    let split = match json_length.map(|v| std::str::from_utf8(v).ok().and_then(|v| v.parse::<usize>().ok())) {
        None => body.len(),
        Some(Some(n)) if n <= body.len() => n,
        Some(_) => return Err(Refusal::bad(format!("{JSON_LENGTH} is not a length within the body"))),
    };
    let mut req: Inference = serde_json::from_slice(&body[..split]).map_err(|e| Refusal::bad(format!("not an inference request: {e}")))?;
    binary_inputs(&mut req, &body[split..]).map_err(Refusal::bad)?;
    Ok(req)
}

async fn infer(State(front): State<Arc<Front>>, Path(name): Path<String>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let span = infer_span("http", &name);
    let resp = answer_infer(&front, &name, &headers, &body).instrument(span.clone()).await;
    span.record("status", resp.status().as_u16());
    hams_operators::metrics::metrics().served("http", resp.status().as_u16());
    resp
}

async fn answer_infer(front: &Front, name: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Err(e) = front.known(name) {
        return refused(e);
    }
    let req = match parse(headers.get(JSON_LENGTH).map(HeaderValue::as_bytes), body) {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    match front.infer(&req, None).await {
        Ok(out) => answer(front, &req, out),
        Err(e) => refused(e),
    }
}

/// The response: JSON, or (asked for binary outputs) JSON then the output's bytes.
fn answer(front: &Front, req: &Inference, out: Output) -> Response {
    let mut head = json!({ "model_name": front.model, "model_version": "1" });
    if let Some(id) = &req.id {
        head["id"] = json!(id);
    }
    let mut tensor = json!({ "name": "OUTPUT", "datatype": out.datatype(), "shape": [1, out.len()] });
    if !req.binary_output() {
        tensor["data"] = match &out {
            Output::F32(v) => json!(v),
            Output::Int32(v) => json!(v),
        };
        head["outputs"] = json!([tensor]);
        return (StatusCode::OK, Json(head)).into_response();
    }
    let bytes = out.le_bytes();
    tensor["parameters"] = json!({ "binary_data_size": bytes.len() });
    head["outputs"] = json!([tensor]);
    let mut body = serde_json::to_vec(&head).expect("JSON of JSON values");
    let json_len = body.len();
    body.extend_from_slice(&bytes);
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(JSON_LENGTH, HeaderValue::from(json_len));
    resp
}
