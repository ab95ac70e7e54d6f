//! Every process serves every request: one for a partition another process
//! owns is forwarded there (checked already, in hams's own form) and its
//! answer, or refusal, relayed back. The owner logs it and keeps its id, so
//! a retry through any process finds the same answer.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hams_storage::{OutputRecord, Request};
use serde::{Deserialize, Serialize};

use super::{Front, Refusal};

/// Where the owner takes forwarded requests (not part of the protocol).
const PATH: &str = "/hams/forward";

/// A request on its way to the process that owns its partition.
#[derive(Serialize, Deserialize)]
struct Forwarded {
    partition: u32,
    id: Option<String>,
    /// The request in hams's binary form.
    request: Vec<u8>,
    timeout_us: u64,
}

/// What the owner says when it refuses (`http::refused`'s body).
#[derive(Deserialize)]
struct Refused {
    error: String,
}

pub(super) fn router(front: Arc<Front>) -> Router {
    Router::new().route(PATH, post(take)).with_state(front)
}

/// Forwards `request` to the process owning `partition` and relays its answer.
pub(super) async fn to_owner(
    front: &Front,
    partition: u32,
    id: Option<String>,
    request: &Request,
    timeout: Duration,
) -> Result<OutputRecord, Refusal> {
    let serving = front.serving.get().ok_or_else(|| Refusal::unavailable("starting").retry_after(1))?;
    let owner = partition as usize / serving.queues.len().max(1);
    let Some(peer) = serving.peers.get(owner) else {
        return Err(Refusal::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!("partition {partition} belongs to process {owner}, which this one cannot reach"),
        ));
    };
    let body = serde_json::to_vec(&Forwarded {
        partition,
        id,
        request: request.encode_binary(),
        timeout_us: timeout.as_micros() as u64,
    })
    .map_err(Refusal::internal)?;
    let url = format!("http://{peer}{PATH}");
    // ureq blocks: off the async threads.
    let reply = tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new().timeout(timeout + Duration::from_secs(1)).build();
        match agent.post(&url).set("Content-Type", "application/json").send_bytes(&body) {
            Ok(r) => Ok(r.into_string().map_err(|e| e.to_string())),
            Err(ureq::Error::Status(code, r)) => {
                let after = r.header("Retry-After").and_then(|a| a.parse().ok());
                let text = r.into_string().unwrap_or_default();
                let error = serde_json::from_str::<Refused>(&text).map_or(text, |r| r.error);
                Err((code, error, after))
            }
            Err(e) => Err((
                StatusCode::SERVICE_UNAVAILABLE.as_u16(),
                format!("process {owner}, which serves partition {partition}, is unreachable ({e}); retry"),
                Some(1),
            )),
        }
    })
    .await
    .map_err(Refusal::internal)?;
    match reply {
        Ok(Ok(text)) => serde_json::from_str(&text).map_err(|e| Refusal::internal(format!("process {owner} answered: {e}"))),
        Ok(Err(e)) => Err(Refusal::internal(format!("reading process {owner}'s answer: {e}"))),
        Err((code, message, retry_after)) => Err(Refusal {
            status: StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY),
            message,
            retry_after,
        }),
    }
}

/// The owner's side: answers a forwarded request in its own partition (never forwards again).
async fn take(State(front): State<Arc<Front>>, body: axum::body::Bytes) -> Response {
    let refuse = super::http::refused;
    let f: Forwarded = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return refuse(Refusal::bad(format!("not a forwarded request: {e}"))),
    };
    let request = match Request::decode(&f.request) {
        Ok(r) => r,
        Err(e) => return refuse(Refusal::bad(e.to_string())),
    };
    let timeout = Duration::from_micros(f.timeout_us);
    match tokio::time::timeout(timeout, front.answer_here(f.partition, f.id, request)).await {
        Ok(Ok(rec)) => Json(rec).into_response(),
        Ok(Err(r)) => refuse(r),
        Err(_) => refuse(Refusal::new(StatusCode::GATEWAY_TIMEOUT, format!("no answer within {timeout:?}"))),
    }
}
