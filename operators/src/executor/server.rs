//! The executor process: connect to the worker, load the model, serve batches.
//!
//! Batches run on a compute thread while the socket task keeps answering
//! pings, so a long batch is not mistaken for a hang; a process that stops
//! answering both is hung.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use super::engine::Engine;
use super::protocol::{FromExecutor, ToExecutor};
use crate::error::{Error, Result};
use crate::model::noise::Noise;
use crate::model::ModelSpec;

/// Socket path the spawned executor connects to; its presence makes a process an executor.
pub const ENV_SOCKET: &str = "HAMS_EXECUTOR_SOCKET";
/// JSON [`ModelSpec`] of the model to serve.
pub const ENV_SPEC: &str = "HAMS_EXECUTOR_SPEC";

/// The frame codec on both ends: u32 length prefix, frames up to 1 GiB.
pub(crate) fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(1 << 30).new_codec()
}

pub(crate) fn encode<T: serde::Serialize>(msg: &T) -> bytes::Bytes {
    bincode::serialize(msg).expect("protocol messages serialize").into()
}

/// If this process was spawned as an executor, serves until the worker goes away
/// and exits; otherwise returns at once. Call it first thing in `main` of any
/// binary that runs hams dataflows with process executors.
pub fn serve_if_child() {
    let Ok(socket) = std::env::var(ENV_SOCKET) else {
        return;
    };
    let code = match serve(&socket) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("hams executor: {e}");
            2
        }
    };
    std::process::exit(code);
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        context: context.to_string(),
        source,
    }
}

fn serve(socket: &str) -> Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let spec_json = std::env::var(ENV_SPEC).map_err(|_| Error::Io {
        context: format!("reading {ENV_SPEC}"),
        source: std::io::Error::other("not set"),
    })?;
    let spec: ModelSpec = serde_json::from_str(&spec_json).map_err(|e| Error::Io {
        context: format!("parsing {ENV_SPEC}"),
        source: std::io::Error::other(e),
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("starting the executor runtime"))?;
    rt.block_on(async move {
        let stream = UnixStream::connect(socket).await.map_err(io(socket))?;
        let (r, w) = stream.into_split();
        let mut reader = FramedRead::new(r, codec());
        let mut writer = FramedWrite::new(w, codec());
        let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<FromExecutor>();
        let writer_task = tokio::spawn(async move {
            while let Some(msg) = out_rx.recv().await {
                if writer.send(encode(&msg)).await.is_err() {
                    break;
                }
            }
        });
        let mut engine = match Engine::new(&spec, Noise::entropy_seed()) {
            Ok(e) => e,
            Err(e) => {
                let _ = out_tx.send(FromExecutor::Fatal(e.to_string()));
                drop(out_tx);
                let _ = tokio::time::timeout(Duration::from_secs(2), writer_task).await;
                return Err(e);
            }
        };
        let _ = out_tx.send(FromExecutor::Ready {
            pid: std::process::id(),
            backend: format!("{:?}", spec.backend).to_lowercase(),
        });
        // Restores go through the compute thread too, so they apply in order with batches.
        let (work_tx, work_rx) = std::sync::mpsc::channel::<ToExecutor>();
        let results = out_tx.clone();
        std::thread::Builder::new()
            .name("compute".into())
            .spawn(move || {
                for work in work_rx {
                    let reply = match work {
                        ToExecutor::Infer(req) => FromExecutor::Done(engine.infer(&req)),
                        ToExecutor::Restore(states) => {
                            engine.restore(states);
                            FromExecutor::Restored
                        }
                        ToExecutor::Ping(_) | ToExecutor::Shutdown => continue,
                    };
                    if results.send(reply).is_err() {
                        break;
                    }
                }
            })
            .map_err(io("spawning the compute thread"))?;
        while let Some(frame) = reader.next().await {
            let frame = frame.map_err(io("reading from the worker"))?;
            match hams_storage::codec::untrusted::<ToExecutor>(&frame) {
                Ok(work @ (ToExecutor::Infer(_) | ToExecutor::Restore(_))) => {
                    let _ = work_tx.send(work);
                }
                Ok(ToExecutor::Ping(n)) => {
                    let _ = out_tx.send(FromExecutor::Pong(n));
                }
                Ok(ToExecutor::Shutdown) => break,
                Err(e) => {
                    let _ = out_tx.send(FromExecutor::Fatal(format!("undecodable frame: {e}")));
                    break;
                }
            }
        }
        // The worker hung up or asked us to stop: exit without finishing queued work.
        Ok(())
    })
}
