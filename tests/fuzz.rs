//! Property-based fuzzing of everything that reads outside input: requests
//! (JSON and binary, as clients and Kafka records send them), served Open
//! Inference Protocol requests (HTTP bodies and gRPC messages), graph files,
//! executor frames and durable records read back from disk.
//!
//! The properties: no panic, every rejection a typed error, what is accepted
//! is well-formed, and no single allocation sized from the input beyond what
//! the input could hold (a counting allocator watches every decode).
//!
//! Seeded and bounded: `HAMS_FUZZ_SEED=N` replays a run (every test prints
//! its seed), `HAMS_FUZZ_CASES=N` scales the cases of every target.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use hams::protocol::exec::{InferRequest, Item, ToExecutor};
use hams::protocol::{Epoch, Seq, SessionId};
use hams::storage::{ErrorKind, Request, Values};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// Tracks the largest single allocation of the current thread.
struct Watch;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only records sizes in a const-initialised thread local.
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(new)));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: Watch = Watch;

/// Runs `f` and fails if it allocated more at once than `input_len` bytes of
/// input could justify (serde preallocates at most 1 MiB from a length hint).
fn bounded<T>(input_len: usize, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    LARGEST.with(|l| l.set(0));
    let out = f();
    let largest = LARGEST.with(Cell::get);
    let limit = (1 << 20).max(64 * input_len);
    if largest > limit {
        return Err(TestCaseError::fail(format!(
            "one allocation of {largest} bytes from {input_len} bytes of input"
        )));
    }
    Ok(out)
}

fn seed() -> u64 {
    match std::env::var("HAMS_FUZZ_SEED") {
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("HAMS_FUZZ_SEED={s:?} is not a number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64,
    }
}

/// Runs `test` on `cases` inputs of `strategy` from a printed seed; a failure
/// names the seed and the smallest input that still fails.
fn fuzz<S: Strategy>(name: &str, cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let seed = seed();
    let scale: f64 = std::env::var("HAMS_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .map_or(1.0, |c: f64| c / 1000.0);
    let cases = ((cases as f64 * scale) as u32).max(1);
    eprintln!("fuzz {name}: seed {seed}, {cases} cases (replay: HAMS_FUZZ_SEED={seed})");
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    match runner.run(&strategy, test) {
        Ok(()) => {}
        Err(TestError::Fail(why, input)) => {
            panic!("fuzz {name} (HAMS_FUZZ_SEED={seed}): {why}\nsmallest failing input: {input:#?}")
        }
        Err(e) => panic!("fuzz {name} (HAMS_FUZZ_SEED={seed}): {e}"),
    }
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Repeat(usize, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, b)| Edit::Flip(i, b)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1..64usize).prop_map(|(i, n)| Edit::Repeat(i, n)),
    ];
    prop::collection::vec(edit, 0..4)
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match e {
            Edit::Flip(i, b) if !bytes.is_empty() => {
                let i = at(*i, bytes.len());
                bytes[i] ^= b;
            }
            Edit::Truncate(i) => bytes.truncate(at(*i, bytes.len() + 1)),
            Edit::Insert(i, b) => {
                let i = at(*i, bytes.len() + 1);
                bytes.splice(i..i, b.iter().copied());
            }
            Edit::Repeat(i, n) if !bytes.is_empty() => {
                let i = at(*i, bytes.len());
                let end = (i + n).min(bytes.len());
                let part = bytes[i..end].to_vec();
                bytes.splice(end..end, part);
            }
            _ => {}
        }
    }
    bytes
}

fn values() -> impl Strategy<Value = Values> {
    prop_oneof![
        prop::collection::vec(any::<f32>(), 0..24).prop_map(Values::F32),
        prop::collection::vec(prop_oneof![0..64u32, any::<u32>()], 0..24).prop_map(Values::Tokens),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (proptest::option::of(any::<u64>()), any::<bool>(), any::<bool>(), values()).prop_map(|(session, start, end, input)| Request {
        session,
        start,
        end,
        input,
    })
}

/// Bytes a client might send: garbage, or a request in either wire form, edited.
fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        (request(), edits()).prop_map(|(r, e)| apply(r.encode_json().into_bytes(), &e)),
        (request(), edits()).prop_map(|(r, e)| apply(r.encode_binary(), &e)),
        // Binary framing with an arbitrary body: the length fields are the input's.
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| [b"HRQ1".as_slice(), &b].concat()),
    ]
}

#[test]
fn requests_decode_or_get_a_typed_error() {
    let graph = hams::GraphDef::from_file(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/graphs/chain.toml"))
        .unwrap()
        .build()
        .unwrap();
    fuzz("requests", 200_000, request_bytes(), |bytes| {
        let decoded = bounded(bytes.len(), || Request::decode(&bytes))?;
        match decoded {
            Ok(r) => {
                if let Values::F32(v) = &r.input {
                    prop_assert!(v.iter().all(|x| x.is_finite()), "a non-finite input was accepted: {r:?}");
                }
                prop_assert!(!r.end || r.session.is_some(), "end without a session accepted");
                // Either wire form of an accepted request reads back as itself.
                prop_assert_eq!(Request::decode(r.encode_json().as_bytes()).ok(), Some(r.clone()));
                prop_assert_eq!(Request::decode(&r.encode_binary()).ok(), Some(r));
            }
            Err(e) => prop_assert!(matches!(e, hams::storage::Error::MalformedRequest { .. }), "{e}"),
        }
        // What the source makes of it: a record of the service's shape, or a typed error.
        match bounded(bytes.len(), || hams::dataflow::source::admit(&graph.source, 7, 0, 3, 0, &bytes))? {
            Ok(env) => prop_assert_eq!(env.values.len(), graph.source.shape.iter().product::<usize>()),
            Err(f) => prop_assert!(
                matches!(f.error.kind, ErrorKind::Malformed | ErrorKind::Type | ErrorKind::Shape),
                "{:?}",
                f.error
            ),
        }
        Ok(())
    });
}

/// Numbers worth trying in a graph file.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "1",
            "2",
            "3",
            "-1",
            "16777216",
            "16777217",
            "2147483648",
            "4294967296",
            "9007199254740993",
            "9223372036854775807",
            "1e9",
            "0.5",
            "\"8\"",
        ])
        .prop_map(String::from),
        (0..5000u32).prop_map(|n| n.to_string()),
    ]
}

/// One edit of a graph file.
#[derive(Debug, Clone)]
enum GraphEdit {
    Number(usize, String),
    DropLine(usize),
    DupLine(usize),
    SwapLines(usize, usize),
    Word(usize, String),
    Bytes(Vec<Edit>),
}

fn graph_edits() -> impl Strategy<Value = Vec<GraphEdit>> {
    let word = prop::sample::select(vec![
        "source",
        "sink",
        "",
        "lstm",
        "gru",
        "mlp",
        "cnn2d",
        "text",
        "torchscript",
        "tokens",
        "f32",
        "cuda:0",
        "auto",
        "tch",
        "kafka",
        "log",
        "embed",
        "tracker",
        "head",
    ])
    .prop_map(String::from);
    let edit = prop_oneof![
        4 => (any::<usize>(), number()).prop_map(|(i, n)| GraphEdit::Number(i, n)),
        1 => any::<usize>().prop_map(GraphEdit::DropLine),
        1 => any::<usize>().prop_map(GraphEdit::DupLine),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(i, j)| GraphEdit::SwapLines(i, j)),
        2 => (any::<usize>(), word).prop_map(|(i, w)| GraphEdit::Word(i, w)),
        1 => edits().prop_map(GraphEdit::Bytes),
    ];
    prop::collection::vec(edit, 1..6)
}

/// Replaces the `i`-th match (mod their count) of `is_token` runs in `text`.
fn replace_nth(text: &str, i: usize, is_token: impl Fn(&str) -> Option<(usize, usize)>, with: &str) -> String {
    let mut spans = Vec::new();
    let mut at = 0;
    while at < text.len() {
        match is_token(&text[at..]) {
            Some((start, len)) => {
                spans.push((at + start, at + start + len));
                at += start + len.max(1);
            }
            None => break,
        }
    }
    if spans.is_empty() {
        return text.to_string();
    }
    let (a, b) = spans[i % spans.len()];
    format!("{}{with}{}", &text[..a], &text[b..])
}

fn edit_graph(text: &str, edits: &[GraphEdit]) -> String {
    let mut text = text.to_string();
    for e in edits {
        let lines: Vec<&str> = text.lines().collect();
        let n = lines.len().max(1);
        text = match e {
            GraphEdit::Number(i, v) => replace_nth(
                &text,
                *i,
                |s| {
                    let start = s.find(|c: char| c.is_ascii_digit())?;
                    let len = s[start..].find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len() - start);
                    Some((start, len))
                },
                v,
            ),
            GraphEdit::DropLine(i) => lines
                .iter()
                .enumerate()
                .filter(|(k, _)| k != &(i % n))
                .map(|(_, l)| format!("{l}\n"))
                .collect(),
            GraphEdit::DupLine(i) => lines
                .iter()
                .enumerate()
                .flat_map(|(k, l)| std::iter::repeat_n(format!("{l}\n"), if k == i % n { 2 } else { 1 }))
                .collect(),
            GraphEdit::SwapLines(i, j) => {
                let mut ls: Vec<&str> = lines.clone();
                if !ls.is_empty() {
                    ls.swap(i % n, j % n);
                }
                ls.iter().map(|l| format!("{l}\n")).collect()
            }
            GraphEdit::Word(i, w) => replace_nth(
                &text,
                *i,
                |s| {
                    let start = s.find('"')? + 1;
                    let len = s[start..].find('"')?;
                    Some((start, len))
                },
                w,
            ),
            GraphEdit::Bytes(b) => String::from_utf8_lossy(&apply(text.into_bytes(), b)).into_owned(),
        };
    }
    text
}

/// Inputs the fuzz suite once failed on, checked on every run.
#[test]
fn fuzz_regressions() {
    // HAMS_FUZZ_SEED=1796686871628639602: a token source with `vocab = 0` was
    // accepted, and its generator panicked on the first request.
    let sentiment =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/graphs/sentiment.toml")).unwrap();
    let text = sentiment.replacen("vocab = 1000", "vocab = 0", 1);
    assert_ne!(text, sentiment);
    let e = hams::GraphDef::from_toml(&text, "fuzz.toml")
        .and_then(|d| d.build_from("fuzz.toml"))
        .unwrap_err();
    assert!(e.to_string().contains("vocab"), "{e}");
}

#[test]
fn graph_files_load_or_get_an_error_that_names_the_file() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/graphs");
    let mut bases: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    bases.sort();
    let strategy = (prop::sample::select(bases), graph_edits()).prop_map(|(base, e)| edit_graph(&base, &e));
    fuzz("graph files", 30_000, strategy, |text| {
        let built = bounded(text.len(), || {
            hams::GraphDef::from_toml(&text, "fuzz.toml").and_then(|d| d.build_from("fuzz.toml"))
        })?;
        let graph = match built {
            Ok(g) => g,
            Err(e) => {
                let shown = e.to_string();
                prop_assert!(shown.starts_with("fuzz.toml"), "the error does not name the file: {shown}");
                return Ok(());
            }
        };
        // An accepted graph places, and its own generator's requests are admitted.
        for (processes, threads) in [(1, 1), (1, 2), (3, 2)] {
            let _ = hams::dataflow::placement::place(&graph, hams::dataflow::placement::Cluster { processes, threads });
        }
        let g = graph.generator();
        for offset in 0..3 {
            let r = g.request(0, 2, offset);
            let admitted = hams::dataflow::source::admit(&graph.source, offset, 0, offset, 0, &r.encode_binary());
            prop_assert!(admitted.is_ok(), "its own request refused: {:?}", admitted.err());
        }
        Ok(())
    });
}

fn frames() -> impl Strategy<Value = Vec<u8>> {
    let item = (
        any::<u64>(),
        proptest::option::of(any::<u64>()),
        any::<bool>(),
        any::<bool>(),
        values(),
    )
        .prop_map(|(seq, session, start, end, input)| Item {
            seq: Seq(seq),
            session: session.map(SessionId),
            start,
            end,
            input,
        });
    let msg = prop_oneof![
        (any::<u64>(), any::<u64>(), prop::collection::vec(item, 0..4)).prop_map(|(ticket, epoch, items)| ToExecutor::Infer(
            InferRequest {
                ticket,
                epoch: Epoch(epoch),
                items,
            }
        )),
        any::<u64>().prop_map(ToExecutor::Ping),
        Just(ToExecutor::Shutdown),
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        (msg, edits()).prop_map(|(m, e)| apply(bincode::serialize(&m).unwrap(), &e)),
    ]
}

#[test]
fn executor_frames_decode_or_get_an_error() {
    use hams::operators::executor::protocol::FromExecutor;
    fuzz("executor frames", 200_000, frames(), |bytes| {
        if let Ok(m) = bounded(bytes.len(), || hams::storage::codec::untrusted::<ToExecutor>(&bytes))? {
            // Whatever decodes is exactly what the bytes encode.
            prop_assert_eq!(bincode::serialize(&m).unwrap(), bytes.clone());
        }
        let _ = bounded(bytes.len(), || hams::storage::codec::untrusted::<FromExecutor>(&bytes))?;
        Ok(())
    });
}

/// Durable values as they might be read back from a damaged disk: garbage,
/// truncated or flipped envelopes, and well-framed envelopes around garbage
/// (the checksum then passes, and the record decoder sees the bytes).
fn stored() -> impl Strategy<Value = Vec<u8>> {
    let framed = |body: Vec<u8>| {
        let mut out = vec![0xA5, 1];
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend(body);
        out
    };
    let sample = |(k, v): (u64, u64)| hams::storage::codec::encode(&(k, vec![v as u32; (k % 5) as usize], format!("s{v}")));
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..128),
        prop::collection::vec(any::<u8>(), 0..128).prop_map(framed),
        ((any::<u64>(), any::<u64>()), edits()).prop_map(move |(s, e)| apply(sample(s), &e)),
    ]
}

#[test]
fn durable_records_decode_or_are_reported_corrupt() {
    use hams::storage::codec::decode;
    use hams::storage::schema::{Execution, GraphShape, OutputRecord, SessionState, SourceRecord};
    fuzz("durable records", 200_000, stored(), |bytes| {
        let corrupt = |r: Result<(), hams::storage::Error>| match r {
            Ok(()) => Ok(()),
            Err(hams::storage::Error::Corrupt { .. }) => Ok(()),
            Err(e) => Err(TestCaseError::fail(format!("not a corruption error: {e}"))),
        };
        bounded(bytes.len(), || -> Result<(), TestCaseError> {
            corrupt(decode::<SourceRecord>("source", b"k", &bytes).map(drop))?;
            corrupt(decode::<OutputRecord>("output", b"k", &bytes).map(drop))?;
            corrupt(decode::<SessionState>("state", b"k", &bytes).map(drop))?;
            corrupt(decode::<Execution>("lineage", b"k", &bytes).map(drop))?;
            corrupt(decode::<GraphShape>("meta", b"k", &bytes).map(drop))?;
            corrupt(decode::<Vec<u32>>("meta", b"k", &bytes).map(drop))?;
            corrupt(decode::<String>("meta", b"k", &bytes).map(drop))?;
            corrupt(decode::<(u64, Vec<u32>, String)>("meta", b"k", &bytes).map(drop))
        })?
    });
}

/// A JSON value worth trying where the protocol expects something else.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(|b| json!(b)),
        any::<i64>().prop_map(|i| json!(i)),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-zA-Z0-9_ ]{0,12}".prop_map(|s| json!(s)),
        prop::collection::vec(-2.0f32..2.0, 0..20).prop_map(|v| json!(v)),
        prop::collection::vec(prop::collection::vec(-1.0f32..1.0, 0..5), 0..5).prop_map(|v| json!(v)),
    ]
}

/// An OIP inference request in JSON, close to a good one for `chain` (16 FP32s).
fn oip_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    let name = prop_oneof![Just("INPUT".to_string()), "[A-Z]{0,6}"];
    let datatype = prop_oneof![
        Just("FP32"),
        Just("FP64"),
        Just("INT32"),
        Just("INT64"),
        Just("BYTES"),
        Just("BOOL")
    ];
    let shape = prop_oneof![
        Just(json!([1, 16])),
        Just(json!([16])),
        prop::collection::vec(any::<i64>(), 0..4).prop_map(|v| json!(v)),
        json_value(),
    ];
    let data = prop_oneof![prop::collection::vec(-1.0f32..1.0, 16).prop_map(|v| json!(v)), json_value()];
    let params = prop::collection::btree_map(
        prop_oneof![
            Just("sequence_id".to_string()),
            Just("sequence_start".to_string()),
            Just("sequence_end".to_string()),
            Just("timeout".to_string()),
            Just("binary_data_output".to_string())
        ],
        json_value(),
        0..4,
    );
    (
        name,
        datatype,
        shape,
        data,
        params,
        proptest::option::of("[a-z0-9-]{0,10}"),
        0..3usize,
    )
        .prop_map(|(name, datatype, shape, data, params, id, copies)| {
            let tensor = json!({ "name": name, "datatype": datatype, "shape": shape, "data": data });
            json!({ "id": id, "parameters": params, "inputs": vec![tensor; copies.max(1)] })
        })
}

/// Protobuf's varint.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field.
fn field(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(((tag as u64) << 3) | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// A `ModelInferRequest` as tritonclient writes one: model, id, a sequence
/// parameter, one input with its shape, and its elements raw or typed.
fn grpc_message(model: &str, id: &str, sequence: i64, shape: &[i64], elements: &[f32], raw: bool) -> Vec<u8> {
    let mut m = Vec::new();
    field(1, model.as_bytes(), &mut m);
    field(3, id.as_bytes(), &mut m);
    let mut entry = Vec::new();
    field(1, b"sequence_id", &mut entry);
    let mut param = vec![0x10]; // int64_param
    varint(sequence as u64, &mut param);
    field(2, &param, &mut entry);
    field(4, &entry, &mut m);
    let mut input = Vec::new();
    field(1, b"INPUT", &mut input);
    field(2, b"FP32", &mut input);
    let mut dims = Vec::new();
    for d in shape {
        varint(*d as u64, &mut dims);
    }
    field(3, &dims, &mut input);
    let bytes: Vec<u8> = elements.iter().flat_map(|x| x.to_le_bytes()).collect();
    if !raw {
        let mut contents = Vec::new();
        field(6, &bytes, &mut contents); // fp32_contents, packed
        field(5, &contents, &mut input);
    }
    field(5, &input, &mut m);
    if raw {
        field(7, &bytes, &mut m);
    }
    m
}

fn grpc_bytes() -> impl Strategy<Value = Vec<u8>> {
    let good = (
        prop_oneof![Just("chain".to_string()), "[a-z]{0,6}"],
        "[a-z0-9]{0,8}",
        any::<i64>(),
        prop_oneof![Just(vec![1i64, 16]), prop::collection::vec(any::<i64>(), 0..4)],
        prop::collection::vec(-1.0f32..1.0, 0..20),
        any::<bool>(),
    )
        .prop_map(|(model, id, seq, shape, el, raw)| grpc_message(&model, &id, seq, &shape, &el, raw));
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        (good, edits()).prop_map(|(m, e)| apply(m, &e)),
    ]
}

#[test]
fn served_requests_over_http_and_grpc_are_checked_or_refused_with_a_4xx() {
    let graph = hams::GraphDef::from_file(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/graphs/chain.toml"))
        .unwrap()
        .build()
        .unwrap();
    let front = hams::dataflow::serve::Front::new("127.0.0.1:0", &graph, hams::dataflow::serve::Limits::default());
    let accepted = |r: &Request| -> Result<(), TestCaseError> {
        let Values::F32(v) = &r.input else {
            return Err(TestCaseError::fail(format!("chain takes FP32s: {r:?}")));
        };
        prop_assert_eq!(v.len(), 16);
        prop_assert!(v.iter().all(|x| x.is_finite()));
        prop_assert!(!(r.start || r.end) || r.session.is_some());
        Ok(())
    };
    let refused = |code: u16, why: &str| -> Result<(), TestCaseError> {
        prop_assert!((400..500).contains(&code) && !why.is_empty(), "{code} {why}");
        Ok(())
    };
    // The unedited forms are accepted, so the edits start from deep inside the checks.
    let good = serde_json::json!({ "parameters": { "sequence_id": 3 }, "inputs": [{ "name": "INPUT", "datatype": "FP32", "shape": [1, 16], "data": vec![0.5; 16] }] });
    assert!(hams::dataflow::serve::check_http(&front, None, good.to_string().as_bytes()).is_ok());
    for raw in [false, true] {
        let m = grpc_message("chain", "a", 3, &[1, 16], &[0.5; 16], raw);
        assert_eq!(
            hams::dataflow::serve::check_grpc(&front, &m).map(|r| r.session),
            Ok(Some(3)),
            "raw {raw}"
        );
    }
    // JSON bodies, edited; and the binary extension, with its header's length as the input says.
    let http = (
        oip_json(),
        edits(),
        proptest::option::of(any::<u16>()),
        prop::collection::vec(any::<u8>(), 0..80),
    );
    fuzz("OIP over HTTP", 20_000, http, |(json, e, split, tail)| {
        let body = [apply(json.to_string().into_bytes(), &e), tail].concat();
        let header = split.map(|s| (s as usize % (body.len() + 8)).to_string());
        match bounded(body.len(), || {
            hams::dataflow::serve::check_http(&front, header.as_deref().map(str::as_bytes), &body)
        })? {
            Ok(r) => accepted(&r),
            Err((code, why)) => refused(code, &why),
        }
    });
    fuzz("OIP over gRPC", 20_000, grpc_bytes(), |bytes| {
        match bounded(bytes.len(), || hams::dataflow::serve::check_grpc(&front, &bytes))? {
            Ok(r) => accepted(&r),
            Err((code, why)) => refused(code, &why),
        }
    });
}
