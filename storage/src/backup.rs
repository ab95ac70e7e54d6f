//! A backup's durable state: its session states and the executions it
//! committed, written as the protocol's backup asks ([`Durable`]), and read
//! back by the checker.

use std::collections::BTreeMap;
use std::sync::Arc;

use hams_protocol::backup::{Durable, Write};
use hams_protocol::records::{Execution, LineageRecord, SessionState};
use hams_protocol::{Incarnation, ModelId, Seq, SessionId};

use crate::error::Result;
use crate::schema::{backup_key, backup_key_prefix, horizon_key, model_key, model_key_parts};
use crate::store::{Batch, Cf, Store};

/// Writes a backup's changes to a store, one atomic batch per write.
#[derive(Debug, Clone)]
pub struct BackupWriter {
    store: Arc<Store>,
    sync: bool,
}

impl BackupWriter {
    /// Writes to `store`; with `sync`, each write waits for the disk.
    pub fn new(store: Arc<Store>, sync: bool) -> Self {
        BackupWriter { store, sync }
    }
}

impl Durable for BackupWriter {
    fn write(&mut self, w: &Write<'_>) -> std::result::Result<(), String> {
        let s = &self.store;
        let mut batch = Batch::new();
        if w.reset {
            // A fresh or adopted image replaces every state this store held for the model.
            batch.delete_range(s, Cf::State, &model_key(w.model, 0), &model_key_end(w.model));
            batch.put(s, Cf::Meta, &backup_key(w.model), &w.inc);
        }
        for (session, state) in w.states {
            match state {
                Some(st) => batch.put(s, Cf::State, &model_key(w.model, session.0), st),
                None => batch.delete(s, Cf::State, &model_key(w.model, session.0)),
            }
        }
        for e in w.lineage {
            batch.put(s, Cf::Lineage, &model_key(w.model, e.seq.0), e);
        }
        for seq in w.forget {
            batch.delete(s, Cf::Lineage, &model_key(w.model, seq.0));
        }
        if let Some(h) = w.horizon {
            batch.put(s, Cf::Meta, &horizon_key(w.model), &h.0);
        }
        s.commit(batch, self.sync).map_err(|e| e.to_string())
    }
}

/// A model's states as one store holds them, with the incarnation of the backup that wrote them.
pub type StoredStates = BTreeMap<ModelId, (Incarnation, BTreeMap<SessionId, SessionState>)>;

/// Every backup state in `store`, and the incarnation of each model's
/// backup here: also when it holds no session (all ended), so a newer
/// backup's empty store outranks an older one's leftovers.
pub fn states(store: &Store) -> Result<StoredStates> {
    let mut out: StoredStates = BTreeMap::new();
    for (k, st) in store.scan::<SessionState>(Cf::State, &[], &[0xff; 11], usize::MAX)? {
        let Some((model, session)) = model_key_parts(&k) else { continue };
        let entry = out.entry(model).or_insert_with(|| (Incarnation(0), BTreeMap::new()));
        entry.1.insert(SessionId(session), st);
    }
    let prefix = backup_key_prefix();
    let mut end = prefix.clone();
    *end.last_mut().expect("a prefix") += 1;
    for (k, inc) in store.scan::<Incarnation>(Cf::Meta, &prefix, &end, usize::MAX)? {
        let Some(model) = std::str::from_utf8(&k[prefix.len()..]).ok().and_then(|m| m.parse().ok()) else {
            continue;
        };
        out.entry(ModelId(model)).or_insert_with(|| (Incarnation(0), BTreeMap::new())).0 = inc;
    }
    Ok(out)
}

/// Every committed execution in `store`, as the checker reads it.
pub fn lineage(store: &Store) -> Result<Vec<(ModelId, Seq, LineageRecord)>> {
    Ok(executions(store, None)?
        .into_iter()
        .map(|(m, e)| (m, e.seq, e.lineage_record()))
        .collect())
}

/// Every committed execution in `store` (of `model` only, if given).
pub fn executions(store: &Store, model: Option<ModelId>) -> Result<Vec<(ModelId, Execution)>> {
    let (from, to) = match model {
        Some(m) => (model_key(m, 0).to_vec(), model_key_end(m)),
        None => (Vec::new(), vec![0xff; 11]),
    };
    Ok(store
        .scan::<Execution>(Cf::Lineage, &from, &to, usize::MAX)?
        .into_iter()
        .filter_map(|(k, e)| model_key_parts(&k).map(|(m, _)| (m, e)))
        .collect())
}

/// The first key after every key of `model`.
fn model_key_end(model: ModelId) -> Vec<u8> {
    match model.0.checked_add(1) {
        Some(next) => model_key(ModelId(next), 0).to_vec(),
        None => vec![0xff; 11],
    }
}

/// The lineage horizon of `model` in `store` (0 when nothing was garbage-collected).
pub fn horizon(store: &Store, model: ModelId) -> Result<Seq> {
    Ok(Seq(store.get::<u64>(Cf::Meta, &horizon_key(model))?.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_replaces_every_state_and_records_the_incarnation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = BackupWriter::new(store.clone(), false);
        let st = |x: f32| SessionState {
            state: vec![x],
            fp: hams_protocol::Fingerprint(x as u64),
        };
        let first = BTreeMap::from([(SessionId(1), Some(st(1.0))), (SessionId(2), Some(st(2.0)))]);
        let rec = Execution {
            seq: Seq(5),
            session: Some(SessionId(1)),
            start: true,
            end: false,
            outcome: Ok(vec![1.0]),
            prev_fp: hams_protocol::Fingerprint(0),
            fp: hams_protocol::Fingerprint(1),
            inc: Incarnation(0),
            epoch: hams_protocol::Epoch(0),
            input_lineage: vec![],
        };
        fn write<'a>(states: &'a BTreeMap<SessionId, Option<SessionState>>, reset: bool, inc: u32, lineage: &'a [Execution]) -> Write<'a> {
            Write {
                model: ModelId(3),
                inc: Incarnation(inc),
                reset,
                states,
                lineage,
                forget: &[],
                horizon: None,
            }
        }
        w.write(&write(&first, true, 0, std::slice::from_ref(&rec))).unwrap();
        let other = BTreeMap::from([(SessionId(9), Some(st(9.0)))]);
        let w2 = Write {
            model: ModelId(4),
            ..write(&other, true, 0, &[])
        };
        w.write(&w2).unwrap();
        let second = BTreeMap::from([(SessionId(2), Some(st(2.5)))]);
        w.write(&write(&second, true, 2, &[])).unwrap();
        let all = states(&store).unwrap();
        assert_eq!(all[&ModelId(3)].0, Incarnation(2));
        assert_eq!(all[&ModelId(3)].1.keys().copied().collect::<Vec<_>>(), vec![SessionId(2)]);
        assert_eq!(all[&ModelId(4)].1.len(), 1, "another model's states are untouched");
        assert_eq!(lineage(&store).unwrap(), vec![(ModelId(3), Seq(5), rec.lineage_record())]);
        assert_eq!(executions(&store, Some(ModelId(3))).unwrap(), vec![(ModelId(3), rec)]);
        assert!(executions(&store, Some(ModelId(4))).unwrap().is_empty());
        // Every session ended: no state left, but the incarnation still shows
        // (the checker then prefers this newer backup to an older one's leftovers).
        let image = BTreeMap::from([(SessionId(2), Some(st(2.5)))]);
        w.write(&write(&image, true, 3, &[])).unwrap();
        let ended = BTreeMap::from([(SessionId(2), None)]);
        w.write(&write(&ended, false, 3, &[])).unwrap();
        let all = states(&store).unwrap();
        assert_eq!(all[&ModelId(3)], (Incarnation(3), BTreeMap::new()));
    }
}
