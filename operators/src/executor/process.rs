//! Spawning an executor process and talking to it over a Unix socket.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::UnixListener;
use tokio::process::Child;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::protocol::{FromExecutor, ToExecutor};
use super::server::{codec, encode, ENV_SOCKET, ENV_SPEC};
use super::{Event, ExecutorHandle, Shared};
use crate::error::{Error, Result};
use crate::model::ModelSpec;

/// How long a spawned executor may take to connect (it loads its model after).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start executor processes.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Binary to execute; it must call [`super::server::serve_if_child`] first in `main`.
    pub program: PathBuf,
    /// Directory for the sockets (kept short: Unix socket paths are limited to ~100 bytes).
    pub socket_dir: PathBuf,
    /// Compute threads per executor.
    pub threads: usize,
}

impl Launch {
    /// Executors run `program`, with sockets in a fresh directory under the system temp dir.
    pub fn new(program: PathBuf, threads: usize) -> Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!("hams-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            context: format!("creating socket dir {}", dir.display()),
            source,
        })?;
        Ok(Launch {
            program,
            socket_dir: dir,
            threads: threads.max(1),
        })
    }
}

/// The process-wide runtime that carries executor connections.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hams-io")
            .enable_all()
            .build()
            .expect("starting the executor I/O runtime")
    })
}

/// Spawns an executor process serving `spec` as replica `replica`.
///
/// Returns once the process is started; its model loads in the background and
/// [`Event::Ready`] (or [`Event::Died`]) follows.
pub fn spawn(spec: &ModelSpec, replica: &str, launch: &Launch) -> Result<ExecutorHandle> {
    static N: AtomicU64 = AtomicU64::new(0);
    let name = format!("{}/{replica}", spec.name);
    let io = |context: String| {
        move |source| Error::Io {
            context: context.clone(),
            source,
        }
    };
    let file: String = spec
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(24)
        .collect();
    let path = launch
        .socket_dir
        .join(format!("{file}-{replica}-{}.sock", N.fetch_add(1, Ordering::Relaxed)));
    let spec_json = serde_json::to_string(spec).expect("specs serialize");
    let _enter = runtime().enter();
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(io(format!("binding {}", path.display())))?;
    let child = tokio::process::Command::new(&launch.program)
        .env(ENV_SOCKET, &path)
        .env(ENV_SPEC, spec_json)
        .env("RAYON_NUM_THREADS", launch.threads.to_string())
        // libtorch's OpenMP pools spin per process: one thread each, or a dozen executors fight over the cores.
        .env("OMP_NUM_THREADS", launch.threads.to_string())
        .env("MKL_NUM_THREADS", launch.threads.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Its own process group: a terminal's Ctrl-C goes to the worker, which
        // drains with its executors alive (they die with it: PDEATHSIG).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(io(format!("starting executor {name} ({})", launch.program.display())))?;
    let (shared, events) = Shared::new(true);
    shared.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    runtime().spawn(supervise(listener, child, rx, shared.clone(), path));
    Ok(ExecutorHandle::new(name, tx, events, shared))
}

/// Runs the connection until it ends, then reports the executor's death once.
async fn supervise(listener: UnixListener, mut child: Child, mut rx: UnboundedReceiver<ToExecutor>, shared: Arc<Shared>, path: PathBuf) {
    let outcome = tokio::select! {
        r = connection(&listener, &mut rx, &shared) => r,
        status = child.wait() => Err(format!("exited before connecting ({})", describe(status.ok()))),
    };
    drop(listener);
    let _ = std::fs::remove_file(&path);
    let reason = match outcome {
        Ok(()) => {
            // Clean shutdown requested by the worker.
            let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            let _ = child.start_kill();
            return;
        }
        Err(reason) => reason,
    };
    let status = match tokio::time::timeout(Duration::from_millis(200), child.wait()).await {
        Ok(s) => describe(s.ok()),
        Err(_) => {
            let _ = child.start_kill();
            "still running; killed".to_string()
        }
    };
    shared.emit(Event::Died {
        reason: format!("{reason}; process {status}"),
    });
}

fn describe(status: Option<std::process::ExitStatus>) -> String {
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with code {c}"),
            (_, Some(sig)) => format!("killed by signal {sig}"),
            _ => s.to_string(),
        },
        None => "status unknown".into(),
    }
}

/// `Ok` on a requested shutdown, `Err(reason)` when the executor went away.
async fn connection(listener: &UnixListener, rx: &mut UnboundedReceiver<ToExecutor>, shared: &Shared) -> std::result::Result<(), String> {
    let (stream, _) = tokio::time::timeout(CONNECT_TIMEOUT, listener.accept())
        .await
        .map_err(|_| format!("did not connect within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("accept failed: {e}"))?;
    let (r, w) = stream.into_split();
    let mut reader = FramedRead::new(r, codec());
    let mut writer = FramedWrite::new(w, codec());
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(ToExecutor::Shutdown) | None => {
                    let _ = writer.send(encode(&ToExecutor::Shutdown)).await;
                    return Ok(());
                }
                Some(m) => writer.send(encode(&m)).await.map_err(|e| format!("write failed: {e}"))?,
            },
            frame = reader.next() => match frame {
                None => return Err("connection closed".into()),
                Some(Err(e)) => return Err(format!("read failed: {e}")),
                Some(Ok(bytes)) => match hams_storage::codec::untrusted::<FromExecutor>(&bytes) {
                    Ok(FromExecutor::Ready { pid, .. }) => shared.emit(Event::Ready { pid }),
                    Ok(FromExecutor::Done(r)) => shared.emit(Event::Done(r)),
                    Ok(FromExecutor::Pong(n)) => shared.emit(Event::Pong(n)),
                    Ok(FromExecutor::Restored) => shared.emit(Event::Restored),
                    Ok(FromExecutor::Fatal(m)) => return Err(m),
                    Err(e) => return Err(format!("undecodable frame: {e}")),
                },
            },
        }
    }
}

/// Removes the socket directory of `launch` (call at shutdown).
pub fn cleanup(launch: &Launch) {
    let _ = std::fs::remove_dir_all(Path::new(&launch.socket_dir));
}
