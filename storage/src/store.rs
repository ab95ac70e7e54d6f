//! The RocksDB database behind a hams data directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{de::DeserializeOwned, Serialize};

use crate::codec;
use crate::error::{Error, Result};

/// Format marker written to `<dir>/FORMAT`; a directory with another marker is refused.
pub const FORMAT: &str = "hams-lineage v1";
const FORMAT_FILE: &str = "FORMAT";
const DB_DIR: &str = "db";

/// The column families of the lineage store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// Request log, by partition and offset.
    Source,
    /// Output topic, by partition and offset.
    Output,
    /// Released `seq`s.
    Released,
    /// Backup state snapshots.
    State,
    /// Per-epoch lineage and logged outputs needed for replay.
    Lineage,
    /// Format marker, consumer positions, placement, incarnations.
    Meta,
}

impl Cf {
    /// Every column family, in creation order.
    pub const ALL: [Cf; 6] = [Cf::Source, Cf::Output, Cf::Released, Cf::State, Cf::Lineage, Cf::Meta];

    /// The RocksDB name of the column family.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Source => "source",
            Cf::Output => "output",
            Cf::Released => "released",
            Cf::State => "state",
            Cf::Lineage => "lineage",
            Cf::Meta => "meta",
        }
    }
}

/// An open data directory. Cheap to share: clone the `Arc`.
pub struct Store {
    db: DB,
    path: PathBuf,
    root: PathBuf,
    /// The successor's mirror every commit also goes to (clusters; see [`crate::mirror`]).
    mirror: std::sync::Mutex<Option<crate::mirror::Link>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// A set of writes applied atomically by [`Store::commit`].
#[derive(Default)]
pub struct Batch {
    pub(crate) inner: WriteBatch,
    ops: usize,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }
    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.ops
    }
    /// True when the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }
    /// Stages a raw value (already enveloped or opaque bytes such as a request).
    pub fn put_raw(&mut self, store: &Store, cf: Cf, key: &[u8], value: &[u8]) {
        self.inner.put_cf(store.cf(cf), key, value);
        self.ops += 1;
    }
    /// Stages a checksummed record.
    pub fn put<T: Serialize>(&mut self, store: &Store, cf: Cf, key: &[u8], value: &T) {
        self.put_raw(store, cf, key, &codec::encode(value));
    }
    /// Stages a deletion.
    pub fn delete(&mut self, store: &Store, cf: Cf, key: &[u8]) {
        self.inner.delete_cf(store.cf(cf), key);
        self.ops += 1;
    }
    /// Stages deletion of keys in `[from, to)`.
    pub fn delete_range(&mut self, store: &Store, cf: Cf, from: &[u8], to: &[u8]) {
        self.inner.delete_range_cf(store.cf(cf), from, to);
        self.ops += 1;
    }
}

/// True when `dir` carries this build's format marker, false when it has none;
/// another version's marker is an error.
fn check_marker(dir: &Path) -> Result<bool> {
    match fs::read_to_string(dir.join(FORMAT_FILE)) {
        Ok(found) if found.trim() == FORMAT => Ok(true),
        Ok(found) => Err(Error::Version {
            path: dir.to_path_buf(),
            found: found.trim().chars().take(80).collect(),
            expected: FORMAT,
        }),
        Err(_) => Ok(false),
    }
}

impl Store {
    /// Opens (creating when absent or empty) the data directory `dir`.
    ///
    /// A non-empty directory without hams' format marker, or with another
    /// version's marker, is refused with [`Error::Foreign`] / [`Error::Version`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Arc<Store>> {
        let dir = dir.as_ref();
        let io = |source| Error::Io {
            path: dir.to_path_buf(),
            source,
        };
        let marker = dir.join(FORMAT_FILE);
        let fresh = match fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(io(e)),
        };
        if fresh {
            fs::create_dir_all(dir).map_err(io)?;
            fs::write(&marker, format!("{FORMAT}\n")).map_err(io)?;
        } else {
            match check_marker(dir)? {
                true => {}
                false => {
                    let names: Vec<String> = fs::read_dir(dir)
                        .map_err(io)?
                        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                        .take(3)
                        .collect();
                    return Err(Error::Foreign {
                        path: dir.to_path_buf(),
                        found: format!("no {FORMAT_FILE} marker; holds {}", names.join(", ")),
                    });
                }
            }
        }
        let path = dir.join(DB_DIR);
        let mut opts = Options::default();
        opts.create_if_missing(fresh);
        opts.create_missing_column_families(fresh);
        opts.set_paranoid_checks(true);
        opts.set_max_background_jobs(2);
        // Small memtables: memory stays flat on an endless stream (everything is GC'd soon).
        opts.set_db_write_buffer_size(16 << 20);
        opts.set_keep_log_file_num(3);
        if !fresh {
            let existing = DB::list_cf(&Options::default(), &path).map_err(|e| Error::Foreign {
                path: dir.to_path_buf(),
                found: format!("marker present but no readable database: {e}"),
            })?;
            for cf in Cf::ALL {
                if !existing.iter().any(|n| n == cf.name()) {
                    return Err(Error::Foreign {
                        path: dir.to_path_buf(),
                        found: format!("database lacks column family {:?}", cf.name()),
                    });
                }
            }
        }
        let cfs = Cf::ALL.map(|cf| {
            let mut o = Options::default();
            o.set_write_buffer_size(4 << 20);
            o.set_max_write_buffer_number(2);
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&opts, &path, cfs).map_err(|e| Error::rocks(&path, e))?;
        let store = Store {
            db,
            path,
            root: dir.to_path_buf(),
            mirror: std::sync::Mutex::new(None),
        };
        store.check_format_record(fresh)?;
        Ok(Arc::new(store))
    }

    /// Opens an existing data directory for reading only (another process may
    /// have it open for writing); used by the verifier.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Arc<Store>> {
        let dir = dir.as_ref();
        if !check_marker(dir)? {
            return Err(Error::Foreign {
                path: dir.to_path_buf(),
                found: format!("no {FORMAT_FILE} marker"),
            });
        }
        let path = dir.join(DB_DIR);
        let cfs = Cf::ALL.map(|cf| cf.name());
        let db = DB::open_cf_for_read_only(&Options::default(), &path, cfs, false).map_err(|e| Error::rocks(&path, e))?;
        let store = Store {
            db,
            path,
            root: dir.to_path_buf(),
            mirror: std::sync::Mutex::new(None),
        };
        store.check_format_record(false)?;
        Ok(Arc::new(store))
    }

    /// The directory of the RocksDB database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_format_record(&self, fresh: bool) -> Result<()> {
        const KEY: &[u8] = crate::schema::FORMAT_KEY;
        if fresh {
            let mut b = Batch::new();
            b.put(self, Cf::Meta, KEY, &FORMAT.to_string());
            return self.commit(b, true);
        }
        match self.get::<String>(Cf::Meta, KEY)? {
            Some(f) if f == FORMAT => Ok(()),
            Some(f) => Err(Error::Version {
                path: self.path.clone(),
                found: f,
                expected: FORMAT,
            }),
            None => Err(Error::Foreign {
                path: self.path.clone(),
                found: "database without a format record".into(),
            }),
        }
    }

    pub(crate) fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(cf.name()).expect("column families are checked at open")
    }

    /// The data directory (its `FORMAT` marker and `db/`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Applies `batch` atomically; with `sync`, waits for the WAL to reach the
    /// disk. In a cluster it returns only once the successor's mirror holds
    /// the batch too.
    ///
    /// # Panics
    /// If the mirror is gone (its process died): the cluster restarts, and
    /// this process with it.
    pub fn commit(&self, mut batch: Batch, sync: bool) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        let mut mirror = self.mirror.lock().expect("poisoned");
        let Some(link) = mirror.as_mut() else {
            drop(mirror);
            return self.db.write_opt(batch.inner, &wo).map_err(|e| Error::rocks(&self.path, e));
        };
        // Numbered, so a restart can tell whether a crash left the copies a batch apart.
        let seq = self.commit_seq()? + 1;
        batch.put(self, Cf::Meta, crate::schema::COMMIT_KEY, &seq);
        let data = batch.inner.data().to_vec();
        self.db.write_opt(batch.inner, &wo).map_err(|e| Error::rocks(&self.path, e))?;
        if let Err(e) = link.write(&data, sync) {
            panic!("the mirror of {} is gone ({e}); a peer process died", self.root.display());
        }
        Ok(())
    }

    /// Sends every later commit to `link` too (see [`crate::mirror`]).
    pub fn set_mirror(&self, link: crate::mirror::Link) {
        *self.mirror.lock().expect("poisoned") = Some(link);
    }

    /// The number of the last mirrored commit (0: none).
    pub fn commit_seq(&self) -> Result<u64> {
        Ok(self.get::<u64>(Cf::Meta, crate::schema::COMMIT_KEY)?.unwrap_or(0))
    }

    /// Applies a batch another store committed (a mirror's side).
    pub fn apply_raw(&self, data: &[u8], sync: bool) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db
            .write_opt(WriteBatch::from_data(data), &wo)
            .map_err(|e| Error::rocks(&self.path, e))
    }

    /// Writes a consistent copy of the database into `dir` (which must not exist).
    pub fn checkpoint(&self, dir: &Path) -> Result<()> {
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(|e| Error::rocks(&self.path, e))?;
        cp.create_checkpoint(dir).map_err(|e| Error::rocks(&self.path, e))
    }

    /// Raw value at `key`.
    pub fn get_raw(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(cf), key).map_err(|e| Error::rocks(&self.path, e))
    }

    /// Checksummed record at `key`.
    pub fn get<T: DeserializeOwned>(&self, cf: Cf, key: &[u8]) -> Result<Option<T>> {
        match self.get_raw(cf, key)? {
            Some(bytes) => codec::decode(cf.name(), key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Raw entries with keys in `[from, to)`, in key order, at most `limit`.
    pub fn scan_raw(&self, cf: Cf, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(self.cf(cf), IteratorMode::From(from, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(|e| Error::rocks(&self.path, e))?;
            if &*k >= to || out.len() >= limit {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    /// Checksummed records with keys in `[from, to)`, in key order, at most `limit`.
    pub fn scan<T: DeserializeOwned>(&self, cf: Cf, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, T)>> {
        self.scan_raw(cf, from, to, limit)?
            .into_iter()
            .map(|(k, v)| codec::decode(cf.name(), &k, &v).map(|t| (k, t)))
            .collect()
    }

    /// The greatest key in `[from, to)`, if any.
    pub fn last_key(&self, cf: Cf, from: &[u8], to: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut iter = self.db.iterator_cf(self.cf(cf), IteratorMode::From(to, Direction::Reverse));
        // `From(to, Reverse)` starts at the last key <= `to`; skip `to` itself.
        for item in iter.by_ref() {
            let (k, _) = item.map_err(|e| Error::rocks(&self.path, e))?;
            if &*k >= to {
                continue;
            }
            return Ok((&*k >= from).then(|| k.into_vec()));
        }
        Ok(None)
    }

    /// Approximate bytes on disk (SST files plus memtables), for bounded-growth checks.
    pub fn approximate_size(&self) -> u64 {
        Cf::ALL
            .iter()
            .map(|cf| {
                let p = |name: &str| self.db.property_int_value_cf(self.cf(*cf), name).ok().flatten().unwrap_or(0);
                p("rocksdb.total-sst-files-size") + p("rocksdb.cur-size-all-mem-tables")
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_keeps_data_and_foreign_dirs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let mut b = Batch::new();
            b.put(&s, Cf::Meta, b"k", &42u64);
            s.commit(b, true).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.get::<u64>(Cf::Meta, b"k").unwrap(), Some(42));
        drop(s);

        let other = tempfile::tempdir().unwrap();
        fs::write(other.path().join("notes.txt"), "hello").unwrap();
        let err = Store::open(other.path()).unwrap_err();
        assert!(matches!(err, Error::Foreign { .. }), "{err}");
        assert!(fs::read_to_string(other.path().join("notes.txt")).unwrap() == "hello");

        fs::write(dir.path().join(FORMAT_FILE), "hams-lineage v0\n").unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Version { .. }), "{err}");
    }

    #[test]
    fn last_key_and_scan_respect_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut b = Batch::new();
        for k in [b"a1", b"a2", b"b1"] {
            b.put_raw(&s, Cf::Source, k, b"v");
        }
        s.commit(b, false).unwrap();
        assert_eq!(s.last_key(Cf::Source, b"a", b"b").unwrap(), Some(b"a2".to_vec()));
        assert_eq!(s.last_key(Cf::Source, b"c", b"d").unwrap(), None);
        assert_eq!(s.scan_raw(Cf::Source, b"a", b"b", 10).unwrap().len(), 2);
        assert_eq!(s.scan_raw(Cf::Source, b"a", b"z", 1).unwrap().len(), 1);
    }
}
