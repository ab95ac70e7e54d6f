//! Restarting a whole cluster from what its processes' disks hold.
//!
//! timely cannot shrink a running cluster, so losing a process means
//! restarting every process. Their memory is gone, but each stateful
//! model's latest synced backup image (states and committed executions) is
//! on some process's disk, and together those images form a consistent cut
//! (a backup never applies what its upstream backups do not hold). A restart
//! is therefore a view change for every model at once:
//! - the model's **primary** starts on the process holding its latest image
//!   (the highest incarnation any backup wrote), as a promotion: it restores
//!   those states and answers replayed requests from those executions;
//! - a new **backup** is placed on another process and synced by snapshot;
//! - the first incarnation of the run is one past the image's, and every
//!   execution of an earlier incarnation (they come back only from images)
//!   counts as committed: the run's **floor**.
//!
//! A model no backup ever wrote has committed nothing, so nothing released
//! depends on it: it starts afresh at incarnation 0.

use std::collections::BTreeMap;

use crate::ids::{Incarnation, ModelId, WorkerId};

/// One process's latest backup image of a model: the incarnation whose
/// backup wrote it, and a worker of that process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Image {
    /// The model.
    pub model: ModelId,
    /// Incarnation of the backup that wrote the image.
    pub inc: Incarnation,
    /// A worker of the process whose disk holds it.
    pub worker: WorkerId,
}

/// How one stateful model starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// Its first incarnation in this run.
    pub inc: Incarnation,
    /// Worker of its primary.
    pub primary: WorkerId,
    /// Worker of its backup.
    pub backup: WorkerId,
    /// Worker whose disk holds the image the primary starts from (`None`: a fresh start).
    pub image: Option<WorkerId>,
}

impl Start {
    /// Executions of incarnations below this come from images: committed.
    pub fn floor(&self) -> Incarnation {
        self.inc
    }
}

/// How every stateful model starts: from `initial` placements (primary,
/// backup) when nothing was written, else from the latest image.
pub fn plan(
    initial: &BTreeMap<ModelId, (WorkerId, WorkerId)>,
    images: &[Image],
    threads: usize,
    workers: usize,
) -> BTreeMap<ModelId, Start> {
    let threads = threads.max(1);
    let process = |w: WorkerId| w.0 / threads;
    initial
        .iter()
        .map(|(m, (primary, backup))| {
            let latest = images.iter().filter(|i| i.model == *m).max_by_key(|i| i.inc);
            let start = match latest {
                None => Start {
                    inc: Incarnation(0),
                    primary: *primary,
                    backup: *backup,
                    image: None,
                },
                Some(i) => {
                    let primary = i.worker;
                    // The backup on another process when there is one (its first worker).
                    let backup = (1..workers)
                        .map(|k| WorkerId((primary.0 + k * threads) % workers))
                        .find(|w| process(*w) != process(primary))
                        .unwrap_or(WorkerId((primary.0 + 1) % workers.max(1)));
                    Start {
                        inc: i.inc.next(),
                        primary,
                        backup,
                        image: Some(i.worker),
                    }
                }
            };
            (*m, start)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_image_becomes_the_primary_and_the_backup_moves_to_another_process() {
        let initial = BTreeMap::from([(ModelId(1), (WorkerId(0), WorkerId(2))), (ModelId(2), (WorkerId(2), WorkerId(4)))]);
        let images = [
            Image {
                model: ModelId(1),
                inc: Incarnation(0),
                worker: WorkerId(2),
            },
            Image {
                model: ModelId(1),
                inc: Incarnation(3),
                worker: WorkerId(4),
            },
        ];
        let p = plan(&initial, &images, 2, 6);
        let m1 = p[&ModelId(1)];
        assert_eq!((m1.inc, m1.primary, m1.image), (Incarnation(4), WorkerId(4), Some(WorkerId(4))));
        assert_ne!(m1.backup.0 / 2, m1.primary.0 / 2, "backup on another process");
        // Never written: a fresh start where the graph puts it.
        assert_eq!(
            p[&ModelId(2)],
            Start {
                inc: Incarnation(0),
                primary: WorkerId(2),
                backup: WorkerId(4),
                image: None
            }
        );
    }
}
