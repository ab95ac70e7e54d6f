//! Micro-benchmarks of the hot paths: an executor round trip (thread and
//! process), encoding and applying a state delta, a RocksDB epoch batch, and
//! a sink commit through the released ledger.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use hams::operators::executor::process::{self, Launch};
use hams::operators::executor::protocol::{InferRequest, Item, SessionState, ToExecutor};
use hams::operators::executor::{inproc, Event, ExecutorHandle};
use hams::operators::model::{Arch, BackendKind, ModelSpec, Weights};
use hams::protocol::records::{Delta, DeltaBody, Execution};
use hams::protocol::{Epoch, Fingerprint, Incarnation, ModelId, Seq, SessionId, WorkerId};
use hams::storage::{Batch, Cf, Log, OutputRecord, Released, Store, Values};

fn lstm() -> ModelSpec {
    ModelSpec {
        name: "lstm".into(),
        arch: Arch::Lstm { hidden: 64 },
        input_len: 32,
        output_len: 8,
        weights: Weights::Seeded(1),
        backend: BackendKind::Candle,
        device: "cpu".into(),
        noise: 0.0,
    }
}

fn batch(rows: u64) -> InferRequest {
    InferRequest {
        ticket: 0,
        epoch: Epoch(0),
        items: (0..rows)
            .map(|i| Item {
                seq: Seq(i),
                session: Some(SessionId(i)),
                start: true,
                end: false,
                input: Values::F32(vec![0.25; 32]),
            })
            .collect(),
    }
}

fn round_trip(ex: &ExecutorHandle, req: &InferRequest) {
    ex.send(ToExecutor::Infer(req.clone()));
    loop {
        match ex.try_event() {
            Some(Event::Done(_)) => return,
            Some(Event::Died { reason }) => panic!("executor died: {reason}"),
            _ => std::hint::spin_loop(),
        }
    }
}

fn wait_ready(ex: &ExecutorHandle) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Some(Event::Ready { .. }) = ex.try_event() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("executor not ready");
}

fn executor_round_trip(c: &mut Criterion) {
    let spec = lstm();
    let req = batch(16);
    let thread = inproc::spawn(&spec, "bench");
    wait_ready(&thread);
    c.bench_function("executor round trip, thread, LSTM batch 16", |b| {
        b.iter(|| round_trip(&thread, &req))
    });
    let launch = Launch::new(env!("CARGO_BIN_EXE_hams").into(), 1).unwrap();
    let proc_ex = process::spawn(&spec, "bench", &launch).unwrap();
    wait_ready(&proc_ex);
    c.bench_function("executor round trip, process, LSTM batch 16", |b| {
        b.iter(|| round_trip(&proc_ex, &req))
    });
    drop(proc_ex);
    process::cleanup(&launch);
}

fn delta(rows: u64) -> Delta {
    Delta {
        model: ModelId(3),
        inc: Incarnation(0),
        to: WorkerId(1),
        body: DeltaBody::Exec {
            states: (0..rows)
                .map(|s| {
                    let st = SessionState {
                        state: vec![0.5; 128],
                        fp: Fingerprint(s),
                    };
                    (SessionId(s), Some(st))
                })
                .collect(),
            executions: (0..rows)
                .map(|seq| Execution {
                    seq: Seq(seq),
                    session: Some(SessionId(seq)),
                    start: false,
                    end: false,
                    outcome: Ok(vec![0.1; 8]),
                    prev_fp: Fingerprint(1),
                    fp: Fingerprint(2),
                    inc: Incarnation(0),
                    epoch: Epoch(7),
                    input_lineage: Vec::new(),
                })
                .collect(),
        },
    }
}

fn state_delta(c: &mut Criterion) {
    let d = delta(64);
    c.bench_function("state delta encode+decode, 64 sessions", |b| {
        b.iter(|| {
            let bytes = bincode::serialize(&d).unwrap();
            let back: Delta = bincode::deserialize(&bytes).unwrap();
            std::hint::black_box(back);
        })
    });
    c.bench_function("state delta apply, 64 sessions", |b| {
        b.iter_batched(
            || (std::collections::BTreeMap::<SessionId, SessionState>::new(), d.clone()),
            |(mut states, d)| {
                if let DeltaBody::Exec { states: updates, .. } = d.body {
                    for (s, st) in updates {
                        match st {
                            Some(st) => states.insert(s, st),
                            None => states.remove(&s),
                        };
                    }
                }
                states
            },
            BatchSize::SmallInput,
        )
    });
}

fn output(seq: u64) -> OutputRecord {
    OutputRecord {
        seq: Seq(seq),
        offset: seq,
        session: Some(SessionId(seq % 16)),
        epoch: Epoch(1),
        ingest_us: 0,
        release_us: 0,
        outcome: Ok(Values::F32(vec![0.5; 8])),
        lineage: Vec::new(),
    }
}

fn rocksdb_epoch_batch(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let log = Log::new(store.clone(), Cf::Output);
    let mut next = 0u64;
    for sync in [false, true] {
        c.bench_function(&format!("rocksdb epoch batch, 64 output records, sync={sync}"), |b| {
            b.iter(|| {
                let mut batch = Batch::new();
                for _ in 0..64 {
                    log.append(&mut batch, 0, next, &output(next));
                    next += 1;
                }
                store.commit(batch, sync).unwrap();
            })
        });
    }
}

fn sink_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut released = Released::load(store.clone(), 0).unwrap();
    let log = Log::new(store.clone(), Cf::Output);
    let mut next = 0u64;
    c.bench_function("sink commit, 64 results (ledger + output, no fsync)", |b| {
        b.iter(|| {
            let mut batch = Batch::new();
            let pairs: Vec<(u64, Seq)> = (next..next + 64).map(|o| (o, Seq(o))).collect();
            for (o, _) in &pairs {
                log.append(&mut batch, 0, *o, &output(*o));
            }
            let staged = released.stage(&mut batch, &pairs);
            store.commit(batch, false).unwrap();
            released.apply(staged);
            next += 64;
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = executor_round_trip, state_delta, rocksdb_epoch_batch, sink_commit
}
criterion_main!(benches);
