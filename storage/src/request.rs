//! Requests as clients send them, their wire formats, and a seeded generator.
//!
//! A request is either JSON (`{"session":3,"start":true,"input":[0.5,...]}`, or
//! `"tokens":[...]` for text models) or the compact binary form the generator
//! writes (`HRQ1` + bincode). Anything else is a [`Error::MalformedRequest`].

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const BINARY_MAGIC: &[u8; 4] = b"HRQ1";

pub use hams_protocol::records::Values;

/// One inference request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Session (sequence) id; stateful models keep one state per session.
    pub session: Option<u64>,
    /// Starts the session: its state begins at zero (like Triton's START flag).
    pub start: bool,
    /// Ends the session: its state is dropped after this request.
    pub end: bool,
    /// The input tensor.
    pub input: Values,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    session: Option<u64>,
    #[serde(default)]
    start: bool,
    #[serde(default)]
    end: bool,
    input: Option<Vec<f32>>,
    tokens: Option<Vec<u32>>,
}

impl Request {
    /// Parses a request from its wire bytes (JSON or binary).
    pub fn decode(bytes: &[u8]) -> Result<Request> {
        let malformed = |reason: String| Error::MalformedRequest { reason };
        if let Some(body) = bytes.strip_prefix(BINARY_MAGIC.as_slice()) {
            let r: Request = crate::codec::untrusted(body).map_err(|e| malformed(format!("binary request: {e}")))?;
            return r.checked();
        }
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned();
            return Err(malformed(format!("expected a JSON object or binary request, got {shown:?}")));
        }
        let j: JsonRequest = serde_json::from_slice(bytes).map_err(|e| malformed(format!("JSON request: {e}")))?;
        let input = match (j.input, j.tokens) {
            (Some(v), None) => Values::F32(v),
            (None, Some(t)) => Values::Tokens(t),
            (Some(_), Some(_)) => return Err(malformed("both \"input\" and \"tokens\" given".into())),
            (None, None) => return Err(malformed("missing \"input\" (or \"tokens\")".into())),
        };
        Request {
            session: j.session,
            start: j.start,
            end: j.end,
            input,
        }
        .checked()
    }

    /// What either wire form must satisfy.
    fn checked(self) -> Result<Request> {
        let malformed = |reason: String| Error::MalformedRequest { reason };
        if let Values::F32(v) = &self.input {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(malformed(format!("input[{i}] is not a finite number")));
            }
        }
        if self.end && self.session.is_none() {
            return Err(malformed("\"end\" without a \"session\"".into()));
        }
        Ok(self)
    }

    /// The compact binary wire form.
    pub fn encode_binary(&self) -> Vec<u8> {
        let mut out = BINARY_MAGIC.to_vec();
        out.extend(bincode::serialize(self).expect("plain data serializes"));
        out
    }

    /// The JSON wire form.
    pub fn encode_json(&self) -> String {
        let mut m = serde_json::Map::new();
        if let Some(s) = self.session {
            m.insert("session".into(), s.into());
        }
        if self.start {
            m.insert("start".into(), true.into());
        }
        if self.end {
            m.insert("end".into(), true.into());
        }
        match &self.input {
            Values::F32(v) => m.insert("input".into(), serde_json::json!(v)),
            Values::Tokens(t) => m.insert("tokens".into(), serde_json::json!(t)),
        };
        serde_json::Value::Object(m).to_string()
    }
}

/// What the generator puts in each request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InputKind {
    /// `len` uniform features in [-1, 1].
    F32 {
        /// Element count.
        len: usize,
    },
    /// `len` token ids below `vocab`.
    Tokens {
        /// Sequence length.
        len: usize,
        /// Vocabulary size.
        vocab: u32,
    },
}

/// A deterministic request generator: request `(partition, offset)` is the same on every run.
///
/// Sessions are pinned to one partition, so a session's requests are ordered
/// by offset, and run `session_len` requests from `start` to `end`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generator {
    /// Seed of the payloads.
    pub seed: u64,
    /// Payload kind and size.
    pub input: InputKind,
    /// Concurrent sessions per partition (0: requests carry no session).
    pub sessions: u32,
    /// Requests per session.
    pub session_len: u32,
}

impl Generator {
    /// The request at `offset` of `partition` out of `partitions`.
    pub fn request(&self, partition: u32, partitions: u32, offset: u64) -> Request {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ (offset.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ ((partition as u64) << 48));
        let input = match &self.input {
            InputKind::F32 { len } => Values::F32((0..*len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()),
            InputKind::Tokens { len, vocab } => Values::Tokens((0..*len).map(|_| rng.gen_range(0..*vocab)).collect()),
        };
        if self.sessions == 0 {
            return Request {
                session: None,
                start: false,
                end: false,
                input,
            };
        }
        let slots = self.sessions as u64;
        let len = self.session_len.max(1) as u64;
        let slot = offset % slots;
        let round = offset / slots;
        let (generation, step) = (round / len, round % len);
        let session = (generation * slots + slot) * partitions as u64 + partition as u64;
        Request {
            session: Some(session),
            start: step == 0,
            end: step == len - 1,
            input,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_binary_round_trip() {
        let g = Generator {
            seed: 1,
            input: InputKind::F32 { len: 4 },
            sessions: 2,
            session_len: 3,
        };
        let r = g.request(1, 2, 5);
        assert_eq!(Request::decode(&r.encode_binary()).unwrap(), r);
        assert_eq!(Request::decode(r.encode_json().as_bytes()).unwrap(), r);
    }

    #[test]
    fn malformed_inputs_are_typed_errors() {
        for bad in [
            &b""[..],
            b"garbage",
            b"{\"input\": [1, \"x\"]}",
            b"{\"session\": 1}",
            b"{\"input\": [1], \"tokens\": [1]}",
            b"{\"input\": [1], \"colour\": 3}",
            b"{\"input\": [1], \"end\": true}",
            b"HRQ1\xff\xff",
        ] {
            let err = Request::decode(bad).unwrap_err();
            assert!(matches!(err, Error::MalformedRequest { .. }), "{bad:?}: {err}");
        }
    }

    #[test]
    fn sessions_are_pinned_to_partitions_and_run_start_to_end() {
        let g = Generator {
            seed: 9,
            input: InputKind::Tokens { len: 3, vocab: 10 },
            sessions: 3,
            session_len: 4,
        };
        let mut seen = std::collections::BTreeMap::<u64, Vec<(bool, bool)>>::new();
        for off in 0..24 {
            let r = g.request(2, 4, off);
            let s = r.session.unwrap();
            assert_eq!(s % 4, 2);
            seen.entry(s).or_default().push((r.start, r.end));
            assert_eq!(r, g.request(2, 4, off), "deterministic");
        }
        assert_eq!(seen.len(), 6);
        for steps in seen.values() {
            assert_eq!(steps.len(), 4);
            assert_eq!(steps[0], (true, false));
            assert_eq!(steps[3], (false, true));
        }
    }
}
