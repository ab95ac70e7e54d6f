//! The layout of a data directory: `DIR/HAMS_DATA` marks it, `DIR/p<N>` holds
//! process N's database (processes of one cluster may share DIR on one host).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Name of the marker file of a data directory.
pub const ROOT_MARKER: &str = "HAMS_DATA";
const ROOT_FORMAT: &str = "hams data v1";

/// The database directory of `process` under the data directory `root`,
/// creating `root` if it is new and refusing it if it belongs to something else.
pub fn process_dir(root: &Path, process: usize) -> Result<PathBuf> {
    let io = |source| Error::Io {
        path: root.to_path_buf(),
        source,
    };
    let marker = root.join(ROOT_MARKER);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::read_to_string(&marker) {
            Ok(found) if found.trim() == ROOT_FORMAT => return Ok(root.join(format!("p{process}"))),
            Ok(found) => {
                return Err(Error::Version {
                    path: root.to_path_buf(),
                    found: found.trim().chars().take(80).collect(),
                    expected: ROOT_FORMAT,
                })
            }
            Err(_) => {}
        }
        let empty = match fs::read_dir(root) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(io(e)),
        };
        if empty {
            fs::create_dir_all(root).map_err(io)?;
            // Write-then-rename, so a concurrent process never reads half a marker.
            let tmp = root.join(format!(".{ROOT_MARKER}.{}", std::process::id()));
            fs::write(&tmp, format!("{ROOT_FORMAT}\n")).map_err(io)?;
            fs::rename(&tmp, &marker).map_err(io)?;
            continue;
        }
        if Instant::now() > deadline {
            let names: Vec<String> = fs::read_dir(root)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .take(3)
                .collect();
            return Err(Error::Foreign {
                path: root.to_path_buf(),
                found: format!("no {ROOT_MARKER} marker; holds {}", names.join(", ")),
            });
        }
        // Another process of the cluster may be creating the marker right now.
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_roots_are_marked_and_foreign_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        assert_eq!(process_dir(&root, 2).unwrap(), root.join("p2"));
        assert!(root.join(ROOT_MARKER).exists());
        assert_eq!(process_dir(&root, 0).unwrap(), root.join("p0"));

        let foreign = dir.path().join("photos");
        fs::create_dir_all(&foreign).unwrap();
        fs::write(foreign.join("cat.jpg"), b"meow").unwrap();
        let err = process_dir(&foreign, 0).unwrap_err();
        assert!(err.to_string().contains("not a hams data directory"), "{err}");
    }
}
