//! Where released results meet the clients waiting for them (`hams run
//! --serve`). A client's request is logged at `(partition, offset)`; the
//! sink of that partition, in the same process, hands the result over here
//! once it is released, so no answer is ever given that a failover could
//! still change.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use hams_storage::OutputRecord;
use tokio::sync::oneshot;

static SERVING: AtomicBool = AtomicBool::new(false);

type Waiters = HashMap<(u32, u64), Vec<oneshot::Sender<OutputRecord>>>;

fn board() -> &'static Mutex<Waiters> {
    static B: OnceLock<Mutex<Waiters>> = OnceLock::new();
    B.get_or_init(Default::default)
}

/// Turns the board on (a front end serves in this process).
pub fn enable() {
    SERVING.store(true, Ordering::SeqCst);
}

/// True when a front end serves in this process (sinks then record where each answer is).
pub fn serving() -> bool {
    SERVING.load(Ordering::Relaxed)
}

/// Waits for the release of the request logged at `(partition, offset)`.
pub fn wait(partition: u32, offset: u64) -> oneshot::Receiver<OutputRecord> {
    let (tx, rx) = oneshot::channel();
    board().lock().expect("poisoned").entry((partition, offset)).or_default().push(tx);
    rx
}

/// Hands a released result to whoever waits for it.
pub fn released(partition: u32, rec: &OutputRecord) {
    let waiting = board().lock().expect("poisoned").remove(&(partition, rec.offset));
    for tx in waiting.into_iter().flatten() {
        let _ = tx.send(rec.clone());
    }
}

/// Drops the waits on `(partition, offset)` whose clients went away.
pub fn prune(partition: u32, offset: u64) {
    let mut b = board().lock().expect("poisoned");
    if let Some(w) = b.get_mut(&(partition, offset)) {
        w.retain(|tx| !tx.is_closed());
        if w.is_empty() {
            b.remove(&(partition, offset));
        }
    }
}

/// When (µs since the Unix epoch) a pending view change began holding
/// releases in this process; 0 when none does.
static HELD_SINCE: AtomicU64 = AtomicU64::new(0);

/// A worker's view table has (`true`) or has no (`false`) view change
/// pending; releases wait while one is.
pub fn holding(pending: bool, now_us: u64) {
    if pending {
        let _ = HELD_SINCE.compare_exchange(0, now_us.max(1), Ordering::Relaxed, Ordering::Relaxed);
    } else {
        HELD_SINCE.store(0, Ordering::Relaxed);
    }
}

/// How long a recovery has held releases in this process, if one does.
pub fn held_for() -> Option<std::time::Duration> {
    let since = HELD_SINCE.load(Ordering::Relaxed);
    (since != 0).then(|| std::time::Duration::from_micros(super::now_us().saturating_sub(since)))
}
