//! Model executors: the place a model replica's weights and session states live.
//!
//! An executor is normally its own OS process (`hams` re-executed with
//! [`server::ENV_SOCKET`] set), so a crash, OOM or hang of one model takes down
//! only that replica; the worker sees its death as an [`Event::Died`] at once,
//! from the socket's EOF. An in-process executor (a thread) serves the
//! no-isolation case with the same interface.
//!
//! # Layout
//! - [`protocol`]: the frames on the socket.
//! - [`engine`]: validation, sessions and batched forward passes.
//! - [`server`]: the executor process's main loop.
//! - [`process`]: spawning and talking to an executor process.
//! - [`inproc`]: the in-process executor.

pub mod engine;
pub mod inproc;
pub mod process;
pub mod protocol;
pub mod server;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use protocol::{InferResponse, ToExecutor};

/// Something an executor reports to its worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The model is loaded.
    Ready {
        /// Process id (the worker's own pid for in-process executors).
        pid: u32,
    },
    /// A batch finished.
    Done(InferResponse),
    /// Heartbeat answer.
    Pong(u64),
    /// A `Restore` took effect.
    Restored,
    /// The executor is gone; nothing more will come from it.
    Died {
        /// Why (exit status, signal, socket error, load failure).
        reason: String,
    },
}

impl Event {
    /// The event as the protocol's roles see it.
    pub fn into_core(self) -> hams_protocol::exec::ExecEvent {
        use hams_protocol::exec::ExecEvent;
        match self {
            Event::Ready { .. } => ExecEvent::Ready,
            Event::Done(r) => ExecEvent::Done(r),
            Event::Pong(n) => ExecEvent::Pong(n),
            Event::Restored => ExecEvent::Restored,
            Event::Died { reason } => ExecEvent::Died { reason },
        }
    }
}

/// How long an executor may take to load its model before it counts as hung.
pub const LOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// Executors of this process started and not yet ready (or dead).
static LOADING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Number of executors of this process still loading their models.
pub fn loading() -> usize {
    LOADING.load(Ordering::SeqCst)
}

/// Called whenever an event is queued, to wake the operator that polls it.
pub type Wake = Box<dyn Fn() + Send>;

/// The worker's handle on one executor, however it is hosted.
pub struct ExecutorHandle {
    name: String,
    tx: tokio::sync::mpsc::UnboundedSender<ToExecutor>,
    events: mpsc::Receiver<Event>,
    shared: Arc<Shared>,
}

/// State shared between the handle and the tasks that feed it.
pub(crate) struct Shared {
    pub(crate) pid: AtomicU32,
    ready: std::sync::atomic::AtomicBool,
    pub(crate) isolated: bool,
    wake: Mutex<Option<Wake>>,
    events: Mutex<mpsc::Sender<Event>>,
}

impl Shared {
    pub(crate) fn new(isolated: bool) -> (Arc<Shared>, mpsc::Receiver<Event>) {
        LOADING.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        let shared = Shared {
            pid: AtomicU32::new(0),
            ready: std::sync::atomic::AtomicBool::new(false),
            isolated,
            wake: Mutex::new(None),
            events: Mutex::new(tx),
        };
        (Arc::new(shared), rx)
    }

    /// Queues `event` and wakes the consumer.
    pub(crate) fn emit(&self, event: Event) {
        match event {
            Event::Ready { pid } => {
                self.pid.store(pid, Ordering::SeqCst);
                if !self.ready.swap(true, Ordering::SeqCst) {
                    LOADING.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Event::Died { .. } if !self.ready.swap(true, Ordering::SeqCst) => {
                LOADING.fetch_sub(1, Ordering::SeqCst);
            }
            _ => {}
        }
        // A dropped handle means nobody listens any more; that is fine.
        let _ = self.events.lock().expect("poisoned").send(event);
        if let Some(wake) = self.wake.lock().expect("poisoned").as_ref() {
            wake();
        }
    }
}

impl std::fmt::Debug for ExecutorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorHandle")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .finish()
    }
}

impl ExecutorHandle {
    pub(crate) fn new(
        name: String,
        tx: tokio::sync::mpsc::UnboundedSender<ToExecutor>,
        events: mpsc::Receiver<Event>,
        shared: Arc<Shared>,
    ) -> Self {
        ExecutorHandle { name, tx, events, shared }
    }

    /// `model/replica` name, for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Process id once ready (0 before).
    pub fn pid(&self) -> u32 {
        self.shared.pid.load(Ordering::SeqCst)
    }

    /// True once the model is loaded and the executor serves (a loading
    /// executor is slow, not hung).
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::SeqCst)
    }

    /// True when the executor is a separate OS process.
    pub fn is_isolated(&self) -> bool {
        self.shared.isolated
    }

    /// Sends a message; a dead executor will answer with [`Event::Died`] instead.
    pub fn send(&self, msg: ToExecutor) {
        // If the channel is closed the executor's death was (or will be) reported.
        let _ = self.tx.send(msg);
    }

    /// The next queued event, if any.
    pub fn try_event(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Installs the function that wakes the consumer when events arrive.
    pub fn set_wake(&self, wake: Wake) {
        *self.shared.wake.lock().expect("poisoned") = Some(wake);
        // Events may have arrived before the wake was installed.
        if let Some(w) = self.shared.wake.lock().expect("poisoned").as_ref() {
            w();
        }
    }

    /// Peak resident memory of the executor process so far, MiB (0 in-process or if unknown).
    pub fn peak_rss_mb(&self) -> f64 {
        let pid = self.pid();
        if !self.is_isolated() || pid == 0 {
            return 0.0;
        }
        crate::metrics::peak_rss_mb(&pid.to_string())
    }

    /// Sends `signal` to the executor process (fault injection); no-op in-process.
    pub fn signal(&self, signal: i32) -> bool {
        let pid = self.pid();
        if !self.is_isolated() || pid == 0 {
            return false;
        }
        // SAFETY: kill(2) has no memory-safety preconditions; a stale pid fails with ESRCH.
        unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
    }
}

impl Drop for ExecutorHandle {
    fn drop(&mut self) {
        let _ = self.tx.send(ToExecutor::Shutdown);
    }
}
