//! The protocol crate stays free of I/O: no timely, tokio, RocksDB, processes,
//! sockets, files, threads or clocks, in its sources or its dependencies.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

const FORBIDDEN: &[&str] = &[
    "timely",
    "tokio",
    "rocksdb",
    "std::process",
    "std::net",
    "std::fs",
    "std::thread",
    "Instant",
    "SystemTime",
];

#[test]
fn the_protocol_does_no_io() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    assert!(files.len() > 10, "found the sources");
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("readable");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN {
                if code.contains(word) {
                    found.push(format!("{}:{}: {word}: {}", f.display(), n + 1, line.trim()));
                }
            }
        }
    }
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("manifest");
    for word in ["timely", "tokio", "rocksdb", "libc"] {
        if manifest.lines().any(|l| l.trim_start().starts_with(word)) {
            found.push(format!("Cargo.toml depends on {word}"));
        }
    }
    assert!(found.is_empty(), "the protocol crate must not do I/O:\n{}", found.join("\n"));
}
