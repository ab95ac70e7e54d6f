//! The work of an executor, independent of how it is hosted (process or thread):
//! validate each item, keep per-session state, and run each batch as few
//! forward passes as session order allows.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use hams_protocol::{Fingerprint, Seq, SessionId};
use hams_storage::{ErrorKind, Values};

use super::protocol::{InferRequest, InferResponse, Item, ItemError, ItemResult, SessionState, SessionUpdate};
use crate::error::Result;
use crate::model::noise::Noise;
use crate::model::{self, Input, Model, ModelSpec};

/// A loaded model plus, for stateful models, the state of every open session.
pub struct Engine {
    model: Box<dyn Model>,
    noise: Noise,
    sessions: HashMap<SessionId, SessionState>,
}

/// One item's output before its fingerprints are settled.
#[derive(Debug, Clone)]
struct Output {
    values: Vec<f32>,
    prev_fp: Fingerprint,
    fp: Fingerprint,
}

/// 64-bit FNV-1a step.
fn mix(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
}

/// Fingerprint of a session before its first execution.
pub fn session_origin(model: &str, session: SessionId) -> Fingerprint {
    Fingerprint(mix(mix(0xcbf2_9ce4_8422_2325, model.as_bytes()), &session.0.to_le_bytes()))
}

/// Chains one execution onto `prev`: the request, its input, the noise draw
/// and the state it produced (so a state that silently changed shows).
pub fn chain(prev: Fingerprint, seq: Seq, input: &Values, draw: u64, state: &[f32]) -> Fingerprint {
    let mut h = mix(prev.0, &seq.0.to_le_bytes());
    h = match input {
        Values::F32(v) => v.iter().fold(h, |h, x| mix(h, &x.to_bits().to_le_bytes())),
        Values::Tokens(t) => t.iter().fold(h, |h, x| mix(h, &x.to_le_bytes())),
    };
    h = mix(h, &draw.to_le_bytes());
    Fingerprint(state.iter().fold(h, |h, x| mix(h, &x.to_bits().to_le_bytes())))
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model.spec().name)
            .field("sessions", &self.sessions.len())
            .finish()
    }
}

fn item_error(kind: ErrorKind, message: String) -> ItemError {
    ItemError { kind, message }
}

impl Engine {
    /// Loads the model of `spec`; `noise_seed` seeds the execution draws.
    pub fn new(spec: &ModelSpec, noise_seed: u64) -> Result<Self> {
        Ok(Engine {
            model: model::load(spec)?,
            noise: Noise::new(spec.noise, noise_seed),
            sessions: HashMap::new(),
        })
    }

    /// The model's spec.
    pub fn spec(&self) -> &ModelSpec {
        self.model.spec()
    }

    /// Number of open sessions.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Replaces every session state (a promoted backup's states).
    pub fn restore(&mut self, states: Vec<(SessionId, SessionState)>) {
        self.sessions = states.into_iter().collect();
    }

    /// Checks one item against the model; `Err` goes back to the client.
    fn validate(&self, item: &Item, known: bool) -> std::result::Result<(), ItemError> {
        let spec = self.model.spec();
        let want = spec.input_len;
        match (&item.input, spec.arch.takes_tokens()) {
            (Values::F32(_), true) | (Values::Tokens(_), false) => {
                let expected = if spec.arch.takes_tokens() { "tokens" } else { "f32" };
                return Err(item_error(
                    ErrorKind::Type,
                    format!("model {} takes {expected}, got {}", spec.name, item.input.kind()),
                ));
            }
            _ => {}
        }
        if item.input.len() != want {
            return Err(item_error(
                ErrorKind::Shape,
                format!("model {} takes {want} elements, got {}", spec.name, item.input.len()),
            ));
        }
        if let (Values::Tokens(ids), crate::model::Arch::Text { vocab, .. }) = (&item.input, &spec.arch) {
            if let Some(bad) = ids.iter().find(|t| **t as usize >= *vocab) {
                return Err(item_error(
                    ErrorKind::Type,
                    format!("token id {bad} is outside the vocabulary of {vocab}"),
                ));
            }
        }
        if spec.is_stateful() {
            match item.session {
                None => {
                    return Err(item_error(
                        ErrorKind::UnknownSession,
                        format!("stateful model {} needs a session id", spec.name),
                    ))
                }
                Some(s) if !item.start && !known => {
                    return Err(item_error(
                        ErrorKind::UnknownSession,
                        format!("session {s} was never started (or has ended) at model {}", spec.name),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Runs one batch. Items are processed in the order given; a session
    /// appearing several times is stepped once per occurrence, in order.
    pub fn infer(&mut self, req: &InferRequest) -> InferResponse {
        let started = Instant::now();
        let mut outcomes: Vec<Option<std::result::Result<Output, ItemError>>> = vec![None; req.items.len()];
        let mut draws = Vec::new();
        let mut changed = BTreeMap::new();
        // Waves: the k-th occurrence of each session goes to wave k.
        let mut waves: Vec<Vec<usize>> = Vec::new();
        let mut occurrences: HashMap<SessionId, usize> = HashMap::new();
        let stateful = self.model.spec().is_stateful();
        // Whether each session is open at this point of the batch (ends and starts apply in order).
        let mut open: HashMap<SessionId, bool> = HashMap::new();
        for (i, item) in req.items.iter().enumerate() {
            let known = item
                .session
                .is_some_and(|s| open.get(&s).copied().unwrap_or_else(|| self.sessions.contains_key(&s)));
            if let Err(e) = self.validate(item, known) {
                outcomes[i] = Some(Err(e));
                continue;
            }
            let wave = match (stateful, item.session) {
                (true, Some(s)) => {
                    open.insert(s, !item.end);
                    let k = occurrences.entry(s).or_insert(0);
                    *k += 1;
                    *k - 1
                }
                _ => 0,
            };
            if waves.len() <= wave {
                waves.resize_with(wave + 1, Vec::new);
            }
            waves[wave].push(i);
        }
        let before: HashMap<SessionId, Fingerprint> = if stateful {
            self.sessions.iter().map(|(s, st)| (*s, st.fp)).collect()
        } else {
            HashMap::new()
        };
        for wave in waves {
            let draw = self.noise.draw();
            let items: Vec<&Item> = wave.iter().map(|&i| &req.items[i]).collect();
            match self.run_wave(&items, draw) {
                Ok(rows) => {
                    for (&i, row) in wave.iter().zip(rows) {
                        outcomes[i] = Some(Ok(row));
                        if let (true, Some(s)) = (stateful, req.items[i].session) {
                            changed.insert(s, ());
                        }
                    }
                }
                Err(e) => {
                    for &i in &wave {
                        outcomes[i] = Some(Err(item_error(ErrorKind::Inference, e.to_string())));
                    }
                }
            }
            draws.push(draw);
        }
        // A refused item leaves its session as it stood at that point of the batch.
        let mut at: HashMap<SessionId, Fingerprint> = before;
        let outputs = req
            .items
            .iter()
            .zip(outcomes)
            .map(|(item, outcome)| {
                let outcome = outcome.unwrap_or_else(|| Err(item_error(ErrorKind::Inference, String::new())));
                match (outcome, item.session.filter(|_| stateful)) {
                    (Ok(o), Some(s)) => {
                        if item.end {
                            at.remove(&s);
                        } else {
                            at.insert(s, o.fp);
                        }
                        ItemResult {
                            outcome: Ok(o.values),
                            prev_fp: o.prev_fp,
                            fp: o.fp,
                        }
                    }
                    (Ok(o), None) => ItemResult {
                        outcome: Ok(o.values),
                        prev_fp: Fingerprint(0),
                        fp: Fingerprint(0),
                    },
                    (Err(e), s) => {
                        let fp = s.and_then(|s| at.get(&s).copied()).unwrap_or(Fingerprint(0));
                        ItemResult {
                            outcome: Err(e),
                            prev_fp: fp,
                            fp,
                        }
                    }
                }
            })
            .collect();
        let delta = changed
            .into_keys()
            .map(|s| SessionUpdate {
                session: s,
                state: self.sessions.get(&s).cloned(),
            })
            .collect();
        InferResponse {
            ticket: req.ticket,
            outputs,
            delta,
            draws,
            compute_us: started.elapsed().as_micros() as u64,
        }
    }

    /// One forward pass over items of distinct sessions; updates their states.
    fn run_wave(&mut self, items: &[&Item], draw: u64) -> Result<Vec<Output>> {
        let spec = self.model.spec();
        let (rows, out_len, state_len) = (items.len(), spec.output_len, spec.arch.state_len());
        let mut state = Vec::with_capacity(rows * state_len);
        if state_len > 0 {
            for item in items {
                let s = item.session.expect("validated");
                match self.sessions.get(&s) {
                    Some(st) if !item.start => state.extend_from_slice(&st.state),
                    _ => state.extend(std::iter::repeat_n(0.0, state_len)),
                }
            }
        }
        let mut fwd = match &items[0].input {
            Values::F32(_) => {
                let data: Vec<f32> = items
                    .iter()
                    .flat_map(|it| match &it.input {
                        Values::F32(v) => v.iter().copied(),
                        Values::Tokens(_) => unreachable!("validated"),
                    })
                    .collect();
                self.model.forward(rows, Input::F32(&data), &state)?
            }
            Values::Tokens(_) => {
                let data: Vec<u32> = items
                    .iter()
                    .flat_map(|it| match &it.input {
                        Values::Tokens(v) => v.iter().copied(),
                        Values::F32(_) => unreachable!("validated"),
                    })
                    .collect();
                self.model.forward(rows, Input::Tokens(&data), &state)?
            }
        };
        self.noise.perturb(draw, &mut [&mut fwd.output, &mut fwd.state]);
        let name = &self.model.spec().name;
        let mut outs = Vec::with_capacity(rows);
        for (i, (item, values)) in items.iter().zip(fwd.output.chunks_exact(out_len)).enumerate() {
            let (prev_fp, fp) = match item.session.filter(|_| state_len > 0) {
                Some(s) => {
                    let prev = match self.sessions.get(&s) {
                        Some(st) if !item.start => st.fp,
                        _ => session_origin(name, s),
                    };
                    let state = fwd.state[i * state_len..(i + 1) * state_len].to_vec();
                    let fp = chain(prev, item.seq, &item.input, draw, &state);
                    if item.end {
                        self.sessions.remove(&s);
                    } else {
                        self.sessions.insert(s, SessionState { state, fp });
                    }
                    (prev, fp)
                }
                None => (Fingerprint(0), Fingerprint(0)),
            };
            outs.push(Output {
                values: values.to_vec(),
                prev_fp,
                fp,
            });
        }
        Ok(outs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, BackendKind, Weights};

    fn lstm() -> Engine {
        let spec = ModelSpec {
            name: "l".into(),
            arch: Arch::Lstm { hidden: 4 },
            input_len: 2,
            output_len: 1,
            weights: Weights::Seeded(1),
            backend: BackendKind::Candle,
            device: "cpu".into(),
            noise: 0.0,
        };
        Engine::new(&spec, 1).unwrap()
    }

    fn item(seq: u64, session: u64, start: bool, end: bool) -> Item {
        Item {
            seq: Seq(seq),
            session: Some(SessionId(session)),
            start,
            end,
            input: Values::F32(vec![0.5, -0.5]),
        }
    }

    #[test]
    fn sessions_chain_fingerprints_and_report_their_states() {
        let mut e = lstm();
        let r = e.infer(&InferRequest {
            ticket: 0,
            epoch: hams_protocol::Epoch(0),
            items: vec![item(0, 7, true, false), item(1, 8, true, false), item(2, 7, false, false)],
        });
        assert!(r.outputs.iter().all(|o| o.outcome.is_ok()));
        assert_eq!(r.delta.len(), 2);
        assert!(r.delta.iter().all(|u| u.state.as_ref().is_some_and(|s| s.state.len() == 8)));
        let o: Vec<_> = r.outputs;
        assert_eq!(o[0].prev_fp, session_origin("l", SessionId(7)));
        assert_eq!(o[2].prev_fp, o[0].fp, "second step of session 7 chains on the first");
        assert_eq!(e.sessions(), 2);
        // Ending a session drops it; a request for it afterwards is refused.
        let r = e.infer(&InferRequest {
            ticket: 1,
            epoch: hams_protocol::Epoch(1),
            items: vec![item(3, 7, false, true), item(4, 7, false, false), item(5, 8, false, false)],
        });
        assert!(r.outputs[0].outcome.is_ok());
        // Refused after the end: the session is not open, so its fingerprint is 0.
        assert_eq!(r.outputs[1].outcome.as_ref().unwrap_err().kind, ErrorKind::UnknownSession);
        assert_eq!((r.outputs[1].prev_fp, r.outputs[1].fp), (Fingerprint(0), Fingerprint(0)));
        assert_eq!(r.delta.len(), 2);
        assert_eq!(
            r.delta[0],
            SessionUpdate {
                session: SessionId(7),
                state: None
            }
        );
        // Session 8 is open: a refusal would carry its fingerprint; this one steps it.
        assert_eq!(r.outputs[2].prev_fp, o[1].fp);
    }
}
