//! An inference request as both protocols deliver it, and its checks: what
//! the model accepts becomes hams's own [`Request`], anything else a 400
//! with the reason.

use std::time::Duration;

use hams_storage::{Request, Values};
use serde_json::{json, Map, Value};

use super::{Front, Refusal};

/// The parts of an OIP inference request hams reads (the JSON form; gRPC
/// requests are brought to it).
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct Inference {
    pub(crate) id: Option<String>,
    #[serde(default)]
    pub(crate) parameters: Map<String, Value>,
    pub(crate) inputs: Vec<Tensor>,
    /// Outputs asked for; only their `binary_data` parameter matters (HTTP).
    #[serde(default)]
    pub(crate) outputs: Vec<Requested>,
}

/// An input tensor.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct Tensor {
    pub(crate) name: String,
    pub(crate) shape: Vec<i64>,
    pub(crate) datatype: String,
    /// The elements as JSON; absent when they come binary (`binary_data_size`).
    #[serde(default)]
    pub(crate) data: Value,
    #[serde(default)]
    pub(crate) parameters: Map<String, Value>,
}

/// An output the client asks for.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct Requested {
    #[serde(default)]
    pub(crate) parameters: Map<String, Value>,
}

impl Inference {
    /// The request's own deadline (`timeout`, µs).
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.parameters.get("timeout").and_then(Value::as_u64).map(Duration::from_micros)
    }

    /// Whether the client asked for the output in binary form (HTTP's binary tensor extension).
    pub(crate) fn binary_output(&self) -> bool {
        let flag = |p: &Map<String, Value>, k: &str| p.get(k).and_then(Value::as_bool).unwrap_or(false);
        flag(&self.parameters, "binary_data_output") || self.outputs.iter().any(|o| flag(&o.parameters, "binary_data"))
    }
}

/// The elements of `bytes`, little-endian `datatype`s, as JSON numbers.
pub(crate) fn decode_le(name: &str, datatype: &str, bytes: &[u8]) -> Result<Value, String> {
    let width = match datatype {
        "FP32" | "INT32" | "UINT32" => 4,
        "FP64" | "INT64" | "UINT64" => 8,
        other => return Err(format!("datatype {other}: the model's input is FP32 or INT32")),
    };
    if bytes.len() % width != 0 {
        return Err(format!("input {name:?}: {} bytes are not whole {datatype} elements", bytes.len()));
    }
    let four = |b: &[u8]| -> [u8; 4] { b.try_into().expect("4 bytes") };
    let eight = |b: &[u8]| -> [u8; 8] { b.try_into().expect("8 bytes") };
    let values = bytes.chunks_exact(width).map(|b| match datatype {
        "FP32" => json!(f32::from_le_bytes(four(b))),
        "INT32" => json!(i32::from_le_bytes(four(b))),
        "UINT32" => json!(u32::from_le_bytes(four(b))),
        "FP64" => json!(f64::from_le_bytes(eight(b))),
        "INT64" => json!(i64::from_le_bytes(eight(b))),
        _ => json!(u64::from_le_bytes(eight(b))),
    });
    Ok(Value::Array(values.collect()))
}

/// The elements of a tensor's `data`, flattened (OIP allows nesting).
fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| flatten(x, out)),
        x => out.push(x),
    }
}

/// A client's request as hams's own, or why it is refused.
pub(crate) fn convert(front: &Front, req: &Inference) -> Result<Request, Refusal> {
    check(front, req).map_err(Refusal::bad)
}

fn check(front: &Front, req: &Inference) -> Result<Request, String> {
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
