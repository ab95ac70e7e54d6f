//! What the operators on one worker share: the protocol's view table, the
//! executors they own (by id), the fault plan, and who to wake when the
//! table changes. Operators borrow it briefly and never while they give
//! data (routing reads it).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use hams_protocol::view::ViewTable;
use hams_protocol::{ExecId, ModelId, WorkerId};
use timely::scheduling::Activator;

use super::faults::{Fault, Plan};
use crate::executor::ExecutorHandle;

/// Shared handle on a worker's control state.
pub type ControlRef = Rc<RefCell<Control>>;

/// One worker's control state.
pub struct Control {
    /// The protocol's view table.
    pub table: ViewTable,
    /// Executors started on this worker, by the id the protocol knows them by.
    pub pool: HashMap<ExecId, ExecutorHandle>,
    /// Planned faults.
    pub faults: Plan,
    wakers: Vec<Activator>,
    durable_wakers: Vec<Activator>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("view", &self.table.view())
            .field("executors", &self.pool.len())
            .finish()
    }
}

impl Control {
    /// Control for `partitions` source partitions and the initial
    /// `(model, primary, backup)` placement of every stateful model.
    pub fn new(partitions: usize, models: impl IntoIterator<Item = (u16, usize, usize)>, faults: Vec<Fault>) -> ControlRef {
        let models = models.into_iter().map(|(m, p, b)| (ModelId(m), WorkerId(p), WorkerId(b)));
        Rc::new(RefCell::new(Control {
            table: ViewTable::new(partitions, models),
            pool: HashMap::new(),
            faults: Plan { faults, ..Plan::default() },
            wakers: Vec::new(),
            durable_wakers: Vec::new(),
        }))
    }

    /// Wakes `activator` whenever the view table changes.
    pub fn subscribe(&mut self, activator: Activator) {
        self.wakers.push(activator);
    }

    /// Wakes `activator` whenever a durable frontier advances.
    pub fn subscribe_durable(&mut self, activator: Activator) {
        self.durable_wakers.push(activator);
    }

    /// Wakes every subscriber.
    pub fn wake(&self) {
        for w in &self.wakers {
            w.activate();
        }
    }

    /// Wakes every durable-frontier subscriber.
    pub fn wake_durable(&self) {
        for w in &self.durable_wakers {
            w.activate();
        }
    }

    /// Sets the function that wakes the operator owning executor `exec`.
    pub fn route_events(&self, exec: ExecId, wake: &dyn Fn() -> crate::executor::Wake) {
        if let Some(h) = self.pool.get(&exec) {
            h.set_wake(wake());
        }
    }
}
