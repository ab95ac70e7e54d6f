//! The consistency checker (DESIGN §6): proves from the durable records of a
//! data directory that every request was answered exactly once (I1), that
//! each stateful model's committed executions form one chain per session
//! with no fork (I3/I4), and that every released result embeds only
//! committed executions' fingerprints (I2/I4).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use hams_operators::executor::engine::session_origin;
use hams_operators::ops::backup::{lineage_horizon_key, LineageRecord};
use hams_storage::{codec, Cf, OutputRecord, SourceRecord, Store};
use serde::Serialize;

use crate::error::{Error, Result};

/// Meta key under which a run records its graph's node names.
pub const NODES_KEY: &[u8] = b"graph/nodes";

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Process databases read.
    pub stores: usize,
    /// Requests in the source logs (not garbage-collected).
    pub requests: u64,
    /// Requests answered.
    pub released: u64,
    /// Requests not answered.
    pub lost: u64,
    /// Answers beyond the first.
    pub duplicated: u64,
    /// Committed stateful executions.
    pub executions: u64,
    /// Executions whose fingerprint does not continue their session's chain, or that fork it.
    pub broken_chains: u64,
    /// Released results whose lineage names an execution that is not committed as released.
    pub unmatched_tags: u64,
    /// The first problems, spelled out.
    pub problems: Vec<String>,
}

impl Report {
    /// True when every check passed.
    pub fn consistent(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.broken_chains == 0 && self.unmatched_tags == 0
    }

    fn problem(&mut self, p: String) {
        if self.problems.len() < 20 {
            self.problems.push(p);
        }
    }
}

fn all<T: serde::de::DeserializeOwned>(store: &Store, cf: Cf) -> Result<Vec<(Vec<u8>, T)>> {
    Ok(store.scan(cf, &[], &[0xff; 16], usize::MAX)?)
}

fn part_off(key: &[u8]) -> (u32, u64) {
    (
        u32::from_be_bytes(key[..4].try_into().expect("log key")),
        u64::from_be_bytes(key[4..12].try_into().expect("log key")),
    )
}

/// Checks every process database under the data directory `root`.
pub fn verify(root: &Path) -> Result<Report> {
    let mut dirs: Vec<_> = std::fs::read_dir(root)
        .map_err(|e| Error::Config(format!("{}: {e}", root.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('p')))
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(Error::Config(format!(
            "{}: no process databases (p0, p1, ...) to verify",
            root.display()
        )));
    }
    let mut report = Report::default();
    let mut names: Vec<String> = Vec::new();
    let mut sources: BTreeMap<(u32, u64), ()> = BTreeMap::new();
    let mut outputs: HashMap<(u32, u64), Vec<OutputRecord>> = HashMap::new();
    let mut lineage: HashMap<(u16, u64), LineageRecord> = HashMap::new();
    let mut horizon: HashMap<u16, u64> = HashMap::new();
    for dir in &dirs {
        let store = Store::open_read_only(dir)?;
        report.stores += 1;
        if let Some(n) = store.get::<Vec<String>>(Cf::Meta, NODES_KEY)? {
            names = n;
        }
        for m in 0..names.len().max(64) as u16 {
            if let Some(h) = store.get::<u64>(Cf::Meta, &lineage_horizon_key(m))? {
                let e = horizon.entry(m).or_insert(h);
                *e = (*e).max(h);
            }
        }
        for (k, _) in all::<SourceRecord>(&store, Cf::Source)? {
            sources.insert(part_off(&k), ());
        }
        for (k, r) in all::<OutputRecord>(&store, Cf::Output)? {
            let (p, _) = part_off(&k);
            outputs.entry((p, r.offset)).or_default().push(r);
        }
        for (k, rec) in all::<LineageRecord>(&store, Cf::Lineage)? {
            let model = u16::from_be_bytes([k[0], k[1]]);
            let seq = u64::from_be_bytes(k[2..10].try_into().expect("lineage key"));
            if let Some(other) = lineage.insert((model, seq), rec.clone()) {
                if other != rec {
                    report.broken_chains += 1;
                    report.problem(format!("model {model} seq {seq} committed twice: {other:?} and {rec:?}"));
                }
            }
        }
    }
    // I1: exactly one answer per request.
    report.requests = sources.len() as u64;
    for key in sources.keys() {
        match outputs.get(key).map_or(0, Vec::len) {
            0 => {
                report.lost += 1;
                report.problem(format!("request partition {} offset {} has no answer", key.0, key.1));
            }
            n => {
                report.released += 1;
                report.duplicated += n as u64 - 1;
            }
        }
    }
    for (key, outs) in &outputs {
        if !sources.contains_key(key) && outs.len() > 1 {
            report.duplicated += outs.len() as u64 - 1;
        }
        if outs.len() > 1 {
            report.problem(format!(
                "request partition {} offset {} answered {} times",
                key.0,
                key.1,
                outs.len()
            ));
        }
    }
    // I3/I4: one chain per session.
    report.executions = lineage.len() as u64;
    type Chains<'a> = BTreeMap<(u16, Option<u64>), Vec<(u64, &'a LineageRecord)>>;
    let mut sessions: Chains<'_> = BTreeMap::new();
    for ((m, seq), rec) in &lineage {
        sessions.entry((*m, rec.session)).or_default().push((*seq, rec));
    }
    for ((m, session), mut recs) in sessions {
        recs.sort_by_key(|(seq, _)| *seq);
        let origin = session.map(|s| session_origin(names.get(m as usize).map_or("", String::as_str), s));
        for w in recs.windows(2) {
            let ((_, prev), (seq, rec)) = (w[0], w[1]);
            if rec.prev_fp != prev.fp && Some(rec.prev_fp) != origin {
                report.broken_chains += 1;
                report.problem(format!(
                    "model {m} session {session:?}: seq {seq} does not continue the chain (fork or gap)"
                ));
            }
        }
    }
    // I2/I4: released results embed committed fingerprints only.
    for outs in outputs.values() {
        for out in outs {
            for t in out.lineage.iter().filter(|t| t.fingerprint != 0) {
                match lineage.get(&(t.model, out.seq)) {
                    Some(rec) if rec.fp == t.fingerprint && rec.inc == t.incarnation && rec.epoch == t.epoch => {}
                    Some(rec) => {
                        report.unmatched_tags += 1;
                        report.problem(format!(
                            "seq {} released with {t:?}, but model {} committed {rec:?}",
                            out.seq, t.model
                        ));
                    }
                    None if out.seq < horizon.get(&t.model).copied().unwrap_or(0) => {
                        // Garbage-collected by the lineage retention: not checkable.
                    }
                    None => {
                        report.unmatched_tags += 1;
                        report.problem(format!("seq {} released with {t:?}, which no backup committed", out.seq));
                    }
                }
            }
        }
    }
    Ok(report)
}

/// Records the graph's node names in a process database, for the checker.
pub fn record_nodes(store: &Store, names: Vec<String>) -> Result<()> {
    let mut b = hams_storage::Batch::new();
    b.put_raw(store, Cf::Meta, NODES_KEY, &codec::encode(&names));
    Ok(store.commit(b, false)?)
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: {} requests, {} released, {} lost, {} duplicated; {} committed executions, {} broken chains, {} unmatched lineage tags ({} databases)",
            if self.consistent() { "consistent" } else { "INCONSISTENT" },
            self.requests,
            self.released,
            self.lost,
            self.duplicated,
            self.executions,
            self.broken_chains,
            self.unmatched_tags,
            self.stores
        )?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}
