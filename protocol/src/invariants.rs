//! The invariants (I1–I4) checked over durable evidence. One checker serves
//! the simulator (after every schedule) and `hams verify` (over the RocksDB
//! records of a run), so the two can never disagree about what consistent
//! means.
//!
//! - **I1 exactly once**: every accepted request is released exactly once:
//!   from the ledger and the accepted positions (not from the source log,
//!   which is garbage-collected), and from the output records.
//! - **I2 no orphan released**: every lineage tag of a released result names
//!   a committed execution, and every stateful model on the result's path
//!   left one.
//! - **I3 consistent cut**: every upstream execution a committed execution
//!   consumed is itself committed.
//! - **I4 one history**: each model's committed executions form one chain
//!   per session: a chain begins only at a `start`, each execution continues
//!   from its predecessor's fingerprint (no fork, no gap, no reset), each
//!   `seq` is committed once, and the final state of every open session is
//!   its chain's last.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::ids::{Fingerprint, ModelId, Seq, SessionId};
use crate::records::{LineageRecord, OutputRecord};

/// What one source partition's ledger says.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Partition {
    /// Offsets below this were accepted (the log's end offset).
    pub accepted: u64,
    /// Every offset below this is released.
    pub watermark: u64,
    /// Released offsets at or above the watermark.
    pub above: BTreeSet<u64>,
}

impl Partition {
    fn released(&self, offset: u64) -> bool {
        offset < self.watermark || self.above.contains(&offset)
    }

    /// How many accepted offsets at or above `from` are released (one run's share).
    pub fn released_since(&self, from: u64) -> u64 {
        let below = self.watermark.min(self.accepted).saturating_sub(from);
        below
            + self
                .above
                .iter()
                .filter(|o| (from..self.accepted).contains(*o) && **o >= self.watermark)
                .count() as u64
    }
}

/// Everything the checker reads.
pub struct Evidence<'a> {
    /// Per source partition.
    pub partitions: BTreeMap<u32, Partition>,
    /// Released results, with the partition whose output topic holds them.
    pub outputs: Vec<(u32, OutputRecord)>,
    /// Committed executions, from every store (a `(model, seq)` may appear more than once).
    pub lineage: Vec<(ModelId, Seq, LineageRecord)>,
    /// Per model: lineage below this `seq` was garbage-collected.
    pub horizon: BTreeMap<ModelId, Seq>,
    /// Final state fingerprint of every open session, per model (when the run has finished).
    pub final_states: Option<BTreeMap<ModelId, BTreeMap<SessionId, Fingerprint>>>,
    /// Fingerprint of a session before its first execution.
    pub origin: &'a dyn Fn(ModelId, SessionId) -> Fingerprint,
    /// The stateful models a released record must carry a tag of.
    pub expected: &'a dyn Fn(&OutputRecord) -> BTreeSet<ModelId>,
    /// A model's name, for messages.
    pub name: &'a dyn Fn(ModelId) -> String,
}

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Process databases read (filled in by the reader).
    pub stores: usize,
    /// Requests accepted.
    pub requests: u64,
    /// Requests released.
    pub released: u64,
    /// Accepted requests not released.
    pub lost: u64,
    /// Answers beyond the first.
    pub duplicated: u64,
    /// Committed stateful executions.
    pub executions: u64,
    /// Executions that break their session's chain: forks, gaps, resets, double commits.
    pub broken_chains: u64,
    /// Released results whose lineage names an uncommitted execution, or lacks a model's tag.
    pub unmatched_tags: u64,
    /// Committed executions that consumed an uncommitted upstream execution (I3).
    pub cut_breaks: u64,
    /// Open sessions whose final state is not their chain's last (I4).
    pub state_mismatches: u64,
    /// The first problems, spelled out.
    pub problems: Vec<String>,
}

impl Report {
    /// True when every check passed.
    pub fn consistent(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.broken_chains == 0
            && self.unmatched_tags == 0
            && self.cut_breaks == 0
            && self.state_mismatches == 0
    }

    fn problem(&mut self, p: String) {
        if self.problems.len() < 20 {
            self.problems.push(p);
        }
    }

    /// Adds another partial report (of another process) to this one.
    pub fn merge(&mut self, other: Report) {
        self.stores += other.stores;
        self.requests += other.requests;
        self.released += other.released;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.executions += other.executions;
        self.broken_chains += other.broken_chains;
        self.unmatched_tags += other.unmatched_tags;
        self.cut_breaks += other.cut_breaks;
        self.state_mismatches += other.state_mismatches;
        for p in other.problems {
            self.problem(p);
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: {} requests, {} released, {} lost, {} duplicated; {} committed executions, {} broken chains, {} unmatched lineage tags, {} cut breaks, {} state mismatches ({} databases)",
            if self.consistent() { "consistent" } else { "INCONSISTENT" },
            self.requests,
            self.released,
            self.lost,
            self.duplicated,
            self.executions,
            self.broken_chains,
            self.unmatched_tags,
            self.cut_breaks,
            self.state_mismatches,
            self.stores
        )?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// Checks I1–I4 over `e`.
pub fn check(e: &Evidence<'_>) -> Report {
    let mut r = exactly_once(&e.partitions, &e.outputs);
    let committed = commits(e, &mut r);
    chains(e, &committed, &mut r);
    cut(e, &committed, &mut r);
    tags(e, &committed, &mut r);
    r
}

/// I1 over some partitions: their accepted positions against their ledgers,
/// and their output records (each offset answered once, and only if the
/// ledger says it was released).
pub fn exactly_once(partitions: &BTreeMap<u32, Partition>, outputs: &[(u32, OutputRecord)]) -> Report {
    let mut r = Report::default();
    let mut answers: BTreeMap<(u32, u64), Vec<Seq>> = BTreeMap::new();
    for (p, o) in outputs {
        answers.entry((*p, o.offset)).or_default().push(o.seq);
    }
    for (p, part) in partitions {
        r.requests += part.accepted;
        let released = part.watermark.min(part.accepted) + part.above.iter().filter(|o| **o < part.accepted).count() as u64;
        r.released += released;
        let lost = part.accepted - released;
        if lost > 0 {
            r.lost += lost;
            let first = (part.watermark..part.accepted).find(|o| !part.above.contains(o));
            r.problem(format!(
                "partition {p}: {lost} accepted requests never released (first: offset {first:?})"
            ));
        }
    }
    for ((p, offset), seqs) in &answers {
        if seqs.len() > 1 {
            r.duplicated += seqs.len() as u64 - 1;
            r.problem(format!(
                "seq {} (partition {p} offset {offset}) answered {} times",
                seqs[0],
                seqs.len()
            ));
        }
        let ledgered = partitions.get(p).is_some_and(|part| part.released(*offset));
        if !ledgered {
            r.duplicated += 1;
            r.problem(format!(
                "seq {} (partition {p} offset {offset}) answered but not in the released ledger",
                seqs[0]
            ));
        }
    }
    r
}

/// The committed executions by `(model, seq)`; a second, different commit of one `seq` is a fork.
fn commits<'e>(e: &'e Evidence<'_>, r: &mut Report) -> BTreeMap<(ModelId, Seq), &'e LineageRecord> {
    let mut committed: BTreeMap<(ModelId, Seq), &LineageRecord> = BTreeMap::new();
    for (m, seq, rec) in &e.lineage {
        match committed.insert((*m, *seq), rec) {
            Some(other) if other != rec => {
                r.broken_chains += 1;
                r.problem(format!(
                    "model {} session {} seq {seq}: committed twice, as {} -> {} (inc {}) and {} -> {} (inc {})",
                    (e.name)(*m),
                    show(rec.session),
                    other.prev_fp.0,
                    other.fp.0,
                    other.inc.0,
                    rec.prev_fp.0,
                    rec.fp.0,
                    rec.inc.0
                ));
            }
            _ => {}
        }
    }
    r.executions = committed.len() as u64;
    committed
}

fn show(s: Option<SessionId>) -> String {
    s.map_or("-".into(), |s| s.0.to_string())
}

/// I4: one chain per session, beginning at a start; final states are the chains' ends.
fn chains(e: &Evidence<'_>, committed: &BTreeMap<(ModelId, Seq), &LineageRecord>, r: &mut Report) {
    let mut sessions: BTreeMap<(ModelId, SessionId), Vec<(Seq, &LineageRecord)>> = BTreeMap::new();
    for ((m, seq), rec) in committed {
        if let Some(s) = rec.session {
            sessions.entry((*m, s)).or_default().push((*seq, rec));
        }
    }
    let mut last: BTreeMap<ModelId, BTreeMap<SessionId, Fingerprint>> = BTreeMap::new();
    for ((m, s), recs) in &sessions {
        let origin = (e.origin)(*m, *s);
        let truncated = e.horizon.get(m).is_some_and(|h| h.0 > 0);
        let name = (e.name)(*m);
        // The session's fingerprint before the next execution: None while it is not open.
        let mut at: Option<Fingerprint> = None;
        let mut seen: BTreeSet<Fingerprint> = BTreeSet::new();
        for (i, (seq, rec)) in recs.iter().enumerate() {
            let continues = match (rec.ok, rec.start, at) {
                (true, true, _) => rec.prev_fp == origin,
                (_, _, Some(fp)) => rec.prev_fp == fp,
                // A refusal of a session that is not open carries fingerprint 0.
                (false, _, None) => rec.prev_fp == Fingerprint(0) || (i == 0 && truncated),
                (true, false, None) => i == 0 && truncated,
            };
            if !continues {
                r.broken_chains += 1;
                let what = if rec.prev_fp == origin && !rec.start {
                    "starts again from zero without a start (a reset)".to_string()
                } else if seen.contains(&rec.prev_fp) {
                    "continues from an earlier state (a fork)".to_string()
                } else if rec.prev_fp == Fingerprint(0) {
                    "finds its session not open (its state was lost)".to_string()
                } else if i == 0 {
                    "begins without a start".to_string()
                } else {
                    "does not continue from the last committed state (a gap)".to_string()
                };
                r.problem(format!("model {name} session {} seq {seq}: {what}", s.0));
            }
            seen.insert(rec.prev_fp);
            at = match (rec.ok, rec.end) {
                (true, true) => None,
                (true, false) => Some(rec.fp),
                // A refusal leaves the session as it was.
                (false, _) if rec.fp == Fingerprint(0) => at,
                (false, _) => Some(rec.fp),
            };
        }
        if let Some(fp) = at {
            last.entry(*m).or_default().insert(*s, fp);
        }
    }
    let Some(finals) = &e.final_states else { return };
    for (m, sessions) in &last {
        let have = finals.get(m);
        for (s, fp) in sessions {
            match have.and_then(|h| h.get(s)) {
                Some(f) if f == fp => {}
                Some(f) => {
                    r.state_mismatches += 1;
                    r.problem(format!(
                        "model {} session {}: final state {} is not the chain's last {}",
                        (e.name)(*m),
                        s.0,
                        f.0,
                        fp.0
                    ));
                }
                None => {
                    r.state_mismatches += 1;
                    r.problem(format!("model {} session {}: open, but no final state is held", (e.name)(*m), s.0));
                }
            }
        }
    }
    for (m, sessions) in finals {
        for (s, fp) in sessions {
            let known = last.get(m).is_some_and(|l| l.contains_key(s));
            let truncated = e.horizon.get(m).is_some_and(|h| h.0 > 0);
            if !known && !truncated {
                r.state_mismatches += 1;
                r.problem(format!(
                    "model {} session {}: holds state {} that no committed execution produced",
                    (e.name)(*m),
                    s.0,
                    fp.0
                ));
            }
        }
    }
}

/// I3: upstream executions a committed execution consumed are committed, with the same fingerprint.
fn cut(e: &Evidence<'_>, committed: &BTreeMap<(ModelId, Seq), &LineageRecord>, r: &mut Report) {
    for ((m, seq), rec) in committed {
        for t in &rec.upstream {
            match committed.get(&(t.model, *seq)) {
                Some(up) if up.fp == t.fingerprint && up.inc == t.incarnation && up.epoch == t.epoch => {}
                None if e.horizon.get(&t.model).is_some_and(|h| *seq < *h) => {}
                other => {
                    r.cut_breaks += 1;
                    r.problem(format!(
                        "model {} seq {seq} consumed model {}'s execution (inc {}, epoch {}), {}",
                        (e.name)(*m),
                        (e.name)(t.model),
                        t.incarnation.0,
                        t.epoch.0,
                        if other.is_some() {
                            "which was committed differently"
                        } else {
                            "which was never committed"
                        }
                    ));
                }
            }
        }
    }
}

/// I2: released results carry committed tags, one for every stateful model on their path.
fn tags(e: &Evidence<'_>, committed: &BTreeMap<(ModelId, Seq), &LineageRecord>, r: &mut Report) {
    for (_, out) in &e.outputs {
        let session = show(out.session);
        let gone = |m: ModelId| e.horizon.get(&m).is_some_and(|h| out.seq < *h);
        for t in &out.lineage {
            match committed.get(&(t.model, out.seq)) {
                Some(rec) if rec.fp == t.fingerprint && rec.inc == t.incarnation && rec.epoch == t.epoch => {}
                None if gone(t.model) => {}
                Some(rec) => {
                    r.unmatched_tags += 1;
                    r.problem(format!(
                        "model {} session {session} seq {}: released with inc {} epoch {} fp {}, but committed inc {} epoch {} fp {}",
                        (e.name)(t.model),
                        out.seq,
                        t.incarnation.0,
                        t.epoch.0,
                        t.fingerprint.0,
                        rec.inc.0,
                        rec.epoch.0,
                        rec.fp.0
                    ));
                }
                None => {
                    r.unmatched_tags += 1;
                    r.problem(format!(
                        "model {} session {session} seq {}: released with an execution no backup committed (an orphan)",
                        (e.name)(t.model),
                        out.seq
                    ));
                }
            }
        }
        let tagged: BTreeSet<ModelId> = out.lineage.iter().map(|t| t.model).collect();
        for m in (e.expected)(out) {
            if !tagged.contains(&m) {
                r.unmatched_tags += 1;
                r.problem(format!(
                    "model {} session {session} seq {}: released without that model's lineage tag",
                    (e.name)(m),
                    out.seq
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Epoch, Incarnation};
    use crate::records::{LineageTag, Values};

    /// Two stateful models, `eye` (m0) feeding `tracker` (m1); one session
    /// (7) of three requests, all released: a consistent history to break.
    struct History {
        lineage: Vec<(ModelId, Seq, LineageRecord)>,
        outputs: Vec<(u32, OutputRecord)>,
        partition: Partition,
        finals: BTreeMap<ModelId, BTreeMap<SessionId, Fingerprint>>,
    }

    fn origin(m: ModelId, s: SessionId) -> Fingerprint {
        Fingerprint(1000 * (m.0 as u64 + 1) + s.0)
    }

    fn fp(m: u16, seq: u64) -> Fingerprint {
        Fingerprint(10_000 * (m as u64 + 1) + seq)
    }

    fn tag(m: u16, seq: u64) -> LineageTag {
        LineageTag {
            model: ModelId(m),
            incarnation: Incarnation(0),
            epoch: Epoch(seq),
            fingerprint: fp(m, seq),
        }
    }

    fn consistent() -> History {
        let s = SessionId(7);
        let mut lineage = Vec::new();
        let mut outputs = Vec::new();
        for seq in 0..3u64 {
            for m in 0..2u16 {
                let prev = if seq == 0 { origin(ModelId(m), s) } else { fp(m, seq - 1) };
                let rec = LineageRecord {
                    session: Some(s),
                    start: seq == 0,
                    end: false,
                    ok: true,
                    prev_fp: prev,
                    fp: fp(m, seq),
                    inc: Incarnation(0),
                    epoch: Epoch(seq),
                    upstream: if m == 1 { vec![tag(0, seq)] } else { vec![] },
                };
                lineage.push((ModelId(m), Seq(seq), rec));
            }
            let out = OutputRecord {
                seq: Seq(seq),
                offset: seq,
                session: Some(s),
                epoch: Epoch(seq),
                ingest_us: 0,
                release_us: 0,
                outcome: Ok(Values::F32(vec![1.0])),
                lineage: vec![tag(0, seq), tag(1, seq)],
            };
            outputs.push((0, out));
        }
        let finals = (0..2u16).map(|m| (ModelId(m), BTreeMap::from([(s, fp(m, 2))]))).collect();
        History {
            lineage,
            outputs,
            partition: Partition {
                accepted: 3,
                watermark: 3,
                above: BTreeSet::new(),
            },
            finals,
        }
    }

    fn check_history(h: &History) -> Report {
        let expected = |o: &OutputRecord| -> BTreeSet<ModelId> {
            if o.outcome.is_ok() {
                [ModelId(0), ModelId(1)].into()
            } else {
                BTreeSet::new()
            }
        };
        let name = |m: ModelId| ["eye", "tracker"][m.0 as usize].to_string();
        let e = Evidence {
            partitions: BTreeMap::from([(0, h.partition.clone())]),
            outputs: h.outputs.clone(),
            lineage: h.lineage.clone(),
            horizon: BTreeMap::new(),
            final_states: Some(h.finals.clone()),
            origin: &origin,
            expected: &expected,
            name: &name,
        };
        check(&e)
    }

    fn record(h: &mut History, m: u16, seq: u64) -> &mut LineageRecord {
        &mut h.lineage.iter_mut().find(|(x, s, _)| x.0 == m && s.0 == seq).expect("recorded").2
    }

    /// The report is inconsistent and says `what` about tracker, session 7, `seq`.
    fn fails(r: &Report, what: &str, seq: u64) {
        assert!(!r.consistent(), "{r}");
        let named = r
            .problems
            .iter()
            .any(|p| p.contains(what) && p.contains(&format!("seq #{seq}")) && (p.contains("tracker") || p.contains("partition")));
        assert!(named, "no problem naming {what:?} and seq {seq}:\n{r}");
    }

    #[test]
    fn a_runs_share_counts_only_its_offsets() {
        let part = Partition {
            accepted: 10,
            watermark: 4,
            above: [5, 7, 8].into_iter().collect(),
        };
        assert_eq!(part.released_since(0), 7);
        assert_eq!(part.released_since(3), 4);
        assert_eq!(part.released_since(6), 2);
        assert_eq!(part.released_since(10), 0);
    }

    #[test]
    fn a_consistent_history_passes() {
        let r = check_history(&consistent());
        assert!(r.consistent(), "{r}");
        assert_eq!((r.requests, r.released, r.executions), (3, 3, 6));
    }

    #[test]
    fn a_fork_is_reported() {
        let mut h = consistent();
        // A second execution of seq 2 from the same state, with another noise draw.
        let mut other = record(&mut h, 1, 2).clone();
        other.fp = Fingerprint(99);
        other.inc = Incarnation(1);
        h.lineage.push((ModelId(1), Seq(2), other));
        let r = check_history(&h);
        fails(&r, "committed twice", 2);
        assert!(r.problems.iter().any(|p| p.contains("session 7")), "{r}");
    }

    #[test]
    fn a_reset_is_reported() {
        let mut h = consistent();
        // The state went back to zero without a start (a restart that lost it).
        record(&mut h, 1, 2).prev_fp = origin(ModelId(1), SessionId(7));
        fails(&check_history(&h), "reset", 2);
    }

    #[test]
    fn a_session_found_not_open_is_reported() {
        let mut h = consistent();
        let rec = record(&mut h, 1, 2);
        (rec.ok, rec.prev_fp, rec.fp) = (false, Fingerprint(0), Fingerprint(0));
        fails(&check_history(&h), "state was lost", 2);
    }

    #[test]
    fn a_gap_is_reported() {
        let mut h = consistent();
        record(&mut h, 1, 2).prev_fp = Fingerprint(12345);
        fails(&check_history(&h), "gap", 2);
    }

    #[test]
    fn an_orphan_tag_is_reported() {
        let mut h = consistent();
        // Released with an execution no backup committed.
        h.lineage.retain(|(m, s, _)| !(m.0 == 1 && s.0 == 2));
        h.finals.get_mut(&ModelId(1)).expect("model").insert(SessionId(7), fp(1, 1));
        fails(&check_history(&h), "orphan", 2);
    }

    #[test]
    fn a_tag_that_differs_from_the_commit_is_reported() {
        let mut h = consistent();
        h.outputs[1].1.lineage[1].fingerprint = Fingerprint(4);
        fails(&check_history(&h), "released with inc 0 epoch 1 fp 4", 1);
    }

    #[test]
    fn a_duplicate_first_execution_is_reported() {
        let mut h = consistent();
        let mut again = record(&mut h, 1, 0).clone();
        again.fp = Fingerprint(77);
        h.lineage.push((ModelId(1), Seq(0), again));
        fails(&check_history(&h), "committed twice", 0);
    }

    #[test]
    fn a_result_missing_a_tag_is_reported() {
        let mut h = consistent();
        h.outputs[1].1.lineage.retain(|t| t.model.0 != 1);
        fails(&check_history(&h), "without that model's lineage tag", 1);
    }

    #[test]
    fn an_i3_break_is_reported() {
        let mut h = consistent();
        record(&mut h, 1, 1).upstream[0].fingerprint = Fingerprint(5);
        fails(&check_history(&h), "consumed model eye's execution", 1);
    }

    #[test]
    fn a_final_state_that_is_not_the_chain_end_is_reported() {
        let mut h = consistent();
        h.finals.get_mut(&ModelId(1)).expect("model").insert(SessionId(7), fp(1, 0));
        let r = check_history(&h);
        assert!(!r.consistent() && r.state_mismatches == 1, "{r}");
        assert!(r.problems[0].contains("tracker") && r.problems[0].contains("session 7"), "{r}");
    }

    #[test]
    fn a_lost_release_is_reported() {
        let mut h = consistent();
        h.partition.accepted = 4;
        let r = check_history(&h);
        assert_eq!(r.lost, 1, "{r}");
        assert!(r.problems[0].contains("offset Some(3)"), "{r}");
    }

    #[test]
    fn a_duplicated_release_is_reported() {
        let mut h = consistent();
        let again = h.outputs[1].clone();
        h.outputs.push(again);
        let r = check_history(&h);
        assert_eq!(r.duplicated, 1, "{r}");
        fails(&r, "answered 2 times", 1);
    }

    #[test]
    fn a_release_the_ledger_never_made_is_reported() {
        let mut h = consistent();
        h.partition.watermark = 2;
        let r = check_history(&h);
        assert!(r.lost == 1 && r.duplicated == 1, "{r}");
        fails(&r, "not in the released ledger", 2);
    }
}
