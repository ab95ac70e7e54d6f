//! Opening a cluster process's store with its copy on the next process
//! (see `hams_storage::mirror`): restored from that copy when this host lost
//! its disk, the copy brought level when a crash left them a batch apart,
//! and every later commit sent there before it returns.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hams_storage::mirror::{self, Link, Server};
use hams_storage::Store;

use crate::error::{Error, Result};

/// How long to wait for a peer's mirror server while the cluster (re)starts.
const PATIENCE: Duration = Duration::from_secs(120);

fn io(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Config(format!("{what}: {e}"))
}

/// Opens process `me`'s store at `dir` (under the data directory `root`),
/// mirrored on process `me + 1` of `addresses`; serves the mirror of
/// process `me - 1` for as long as the returned server lives.
pub(crate) fn open(root: &Path, dir: &Path, addresses: &[String], me: usize, tag: u64) -> Result<(Arc<Store>, Arc<Server>)> {
    let n = addresses.len();
    let (pred, succ) = ((me + n - 1) % n, (me + 1) % n);
    let succ_addr = mirror::address(&addresses[succ]).map_err(io("the next process's address"))?;
    let listen = mirror::address(&addresses[me]).map_err(io("this process's address"))?;
    let server = Server::start(&listen, root, pred, tag).map_err(io("starting the mirror server"))?;
    if !dir.join("FORMAT").exists() {
        // A new process, or one whose disk is gone: its copy, if the next process holds one.
        if mirror::fetch_mirror(&succ_addr, tag, dir, PATIENCE).map_err(io("fetching this process's store from its mirror"))? {
            tracing::warn!(dir = %dir.display(), from = succ, "this process's data directory was gone; restored it from its mirror on the next process");
        }
    }
    let store = Store::open(dir)?;
    server.own_store(store.clone());
    // A crash in mid-commit leaves the copies a batch apart; a lost disk leaves none.
    let ours = store.commit_seq()?;
    let theirs = mirror::mirror_seq(&succ_addr, tag, PATIENCE).map_err(io("asking the mirror's state"))?;
    if theirs != Some(ours) {
        tracing::info!(process = me, ?theirs, ours, "bringing this process's mirror level");
        mirror::push_mirror(&succ_addr, tag, &store, PATIENCE).map_err(io("sending this process's store to its mirror"))?;
    }
    store.set_mirror(Link::connect(&succ_addr, tag, PATIENCE).map_err(io("connecting to the mirror"))?);
    Ok((store, server))
}
