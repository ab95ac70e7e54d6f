//! A second copy of each process's store, on the next process of the
//! cluster, so that losing a host with its disk loses nothing durable.
//!
//! Every batch a process commits to its store is also sent to its successor
//! (process `(K + 1) mod N`), which applies it to a *mirror* database
//! (`DIR/mK`), before the commit returns: a write counts as durable once it
//! is in two processes' RocksDB. A process that restarts without its data
//! directory fetches a checkpoint of its mirror; one that lost its copy of
//! its predecessor's store fetches the predecessor's. Each batch carries a
//! commit number, so a restart can tell whether a crash in mid-commit left
//! the two copies one batch apart, and then replaces the mirror.
//!
//! The connection is plain TCP on the process's timely port + 1: a
//! handshake (magic, cluster tag, request kind), then length-prefixed frames.
//! Every length read from it is bounded before anything is allocated.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::store::Store;

const MAGIC: &[u8; 8] = b"HAMSMIR1";
/// Largest batch a mirror accepts (a sanity bound on a length read from the wire).
const MAX_BATCH: u64 = 1 << 30;
/// Largest file name in a checkpoint stream.
const MAX_NAME: u64 = 255;
/// Largest number of files in a checkpoint stream.
const MAX_FILES: u64 = 100_000;

/// What a connection asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    /// The predecessor streams its batches (`[len u64][sync u8][bytes]`, each acknowledged).
    Writes = 1,
    /// The predecessor, restarting without its disk, fetches its mirror.
    FetchMirror = 2,
    /// The successor, restarting without its mirror, fetches this process's store.
    FetchStore = 3,
    /// The predecessor asks the commit number of its mirror.
    MirrorSeq = 4,
    /// The predecessor replaces its mirror with a checkpoint it streams.
    PushMirror = 5,
}

impl Kind {
    fn of(b: u8) -> io::Result<Kind> {
        Ok(match b {
            1 => Kind::Writes,
            2 => Kind::FetchMirror,
            3 => Kind::FetchStore,
            4 => Kind::MirrorSeq,
            5 => Kind::PushMirror,
            _ => return Err(invalid(format!("unknown mirror request {b}"))),
        })
    }
}

fn invalid(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m)
}

/// The mirror address of a process whose timely address is `addr`: the next port.
pub fn address(addr: &str) -> io::Result<String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| invalid(format!("{addr}: expected HOST:PORT")))?;
    let port: u16 = port.parse().map_err(|_| invalid(format!("{addr}: bad port")))?;
    let next = port
        .checked_add(1)
        .ok_or_else(|| invalid(format!("{addr}: no port after {port}")))?;
    Ok(format!("{host}:{next}"))
}

/// Where a process's mirror of process `p` lives under a data directory.
pub fn mirror_dir(root: &Path, p: usize) -> PathBuf {
    root.join(format!("m{p}"))
}

/// This process's side of mirroring: it serves its predecessor's writes and
/// checkpoint requests.
pub struct Server {
    root: PathBuf,
    pred: usize,
    tag: u64,
    /// This process's own store, once open (served to a successor that lost its mirror).
    own: OnceLock<Arc<Store>>,
    mirror: Mutex<Option<Arc<Store>>>,
}

impl Server {
    /// Listens on `listen` for the predecessor `pred`, keeping its mirror under `root`.
    pub fn start(listen: &str, root: &Path, pred: usize, tag: u64) -> io::Result<Arc<Server>> {
        let listener = bind(listen)?;
        let server = Arc::new(Server {
            root: root.to_path_buf(),
            pred,
            tag,
            own: OnceLock::new(),
            mirror: Mutex::new(None),
        });
        let s = server.clone();
        std::thread::Builder::new().name("hams-mirror".into()).spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                let _ = std::thread::Builder::new().name("hams-mirror-conn".into()).spawn(move || {
                    if let Err(e) = s.handle(conn) {
                        tracing::warn!(error = %e, "mirror connection ended");
                    }
                });
            }
        })?;
        Ok(server)
    }

    /// This process's store is open: serve it to a successor that asks.
    pub fn own_store(&self, store: Arc<Store>) {
        let _ = self.own.set(store);
    }

    fn mirror(&self) -> io::Result<Arc<Store>> {
        let mut m = self.mirror.lock().expect("poisoned");
        if let Some(s) = m.as_ref() {
            return Ok(s.clone());
        }
        let s = Store::open(mirror_dir(&self.root, self.pred)).map_err(|e| io::Error::other(e.to_string()))?;
        *m = Some(s.clone());
        Ok(s)
    }

    fn handle(&self, mut conn: TcpStream) -> io::Result<()> {
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut hello = [0u8; 17];
        conn.read_exact(&mut hello)?;
        if &hello[..8] != MAGIC || hello[8..16] != self.tag.to_be_bytes() {
            return Err(invalid("not a mirror peer of this run".into()));
        }
        match Kind::of(hello[16])? {
            Kind::Writes => {
                conn.set_read_timeout(None)?;
                let mirror = self.mirror()?;
                loop {
                    let mut head = [0u8; 9];
                    match conn.read_exact(&mut head) {
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                        r => r?,
                    }
                    let len = u64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
                    if len > MAX_BATCH {
                        return Err(invalid(format!("a batch of {len} bytes")));
                    }
                    let mut data = vec![0u8; len as usize];
                    conn.read_exact(&mut data)?;
                    mirror.apply_raw(&data, head[8] != 0).map_err(|e| io::Error::other(e.to_string()))?;
                    conn.write_all(&[1])?;
                }
            }
            Kind::FetchMirror => {
                let dir = mirror_dir(&self.root, self.pred);
                if !dir.exists() {
                    return conn.write_all(&[0]);
                }
                conn.write_all(&[1])?;
                send_checkpoint(&*self.mirror()?, &mut conn)
            }
            Kind::FetchStore => match self.own.get() {
                Some(s) => {
                    conn.write_all(&[1])?;
                    send_checkpoint(s, &mut conn)
                }
                None => conn.write_all(&[2]),
            },
            Kind::MirrorSeq => {
                let seq = match mirror_dir(&self.root, self.pred).exists() {
                    true => self.mirror()?.commit_seq().map_err(|e| io::Error::other(e.to_string()))?,
                    false => u64::MAX,
                };
                conn.write_all(&seq.to_be_bytes())
            }
            Kind::PushMirror => {
                let dir = mirror_dir(&self.root, self.pred);
                let mut m = self.mirror.lock().expect("poisoned");
                *m = None; // close it before replacing its files
                let tmp = self.root.join(format!(".m{}.incoming", self.pred));
                let _ = fs::remove_dir_all(&tmp);
                receive_checkpoint(&mut conn, &tmp)?;
                let _ = fs::remove_dir_all(&dir);
                fs::rename(&tmp, &dir)?;
                conn.write_all(&[1])
            }
        }
    }
}

fn bind(addr: &str) -> io::Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(io::Error::new(e.kind(), format!("mirror listener on {addr}: {e}"))),
        }
    }
}

/// Opens a connection of `kind` to the mirror server at `addr`, retrying while it is not up.
fn open(addr: &str, tag: u64, kind: Kind, patience: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + patience;
    loop {
        match TcpStream::connect(addr) {
            Ok(mut s) => {
                s.set_nodelay(true)?;
                let mut hello = MAGIC.to_vec();
                hello.extend(tag.to_be_bytes());
                hello.push(kind as u8);
                s.write_all(&hello)?;
                return Ok(s);
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(%addr, error = %e, "mirror peer not up yet");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("mirror peer {addr}: {e}"))),
        }
    }
}

/// The sending side: each committed batch goes to the successor's mirror.
#[derive(Debug)]
pub struct Link {
    stream: TcpStream,
}

impl Link {
    /// Connects to the successor's mirror server.
    pub fn connect(addr: &str, tag: u64, patience: Duration) -> io::Result<Link> {
        Ok(Link {
            stream: open(addr, tag, Kind::Writes, patience)?,
        })
    }

    /// Sends one batch and waits until the mirror holds it.
    pub fn write(&mut self, data: &[u8], sync: bool) -> io::Result<()> {
        let mut head = (data.len() as u64).to_be_bytes().to_vec();
        head.push(sync as u8);
        self.stream.write_all(&head)?;
        self.stream.write_all(data)?;
        let mut ack = [0u8; 1];
        self.stream.read_exact(&mut ack)?;
        if ack[0] != 1 {
            return Err(invalid("the mirror refused a batch".into()));
        }
        Ok(())
    }
}

/// Fetches this process's store from its mirror on the successor at `addr`
/// into `dir`; false if the successor holds no mirror of it.
pub fn fetch_mirror(addr: &str, tag: u64, dir: &Path, patience: Duration) -> io::Result<bool> {
    let mut s = open(addr, tag, Kind::FetchMirror, patience)?;
    let mut ok = [0u8; 1];
    s.read_exact(&mut ok)?;
    if ok[0] != 1 {
        return Ok(false);
    }
    receive_checkpoint(&mut s, dir)?;
    Ok(true)
}

/// Fetches the predecessor's store (at `addr`) into `dir`, waiting while it is not open yet.
pub fn fetch_store(addr: &str, tag: u64, dir: &Path, patience: Duration) -> io::Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        let mut s = open(addr, tag, Kind::FetchStore, patience)?;
        let mut ok = [0u8; 1];
        s.read_exact(&mut ok)?;
        if ok[0] == 1 {
            return receive_checkpoint(&mut s, dir);
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("{addr} never opened its store")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The commit number of this process's mirror on the successor (`None`: it has none).
pub fn mirror_seq(addr: &str, tag: u64, patience: Duration) -> io::Result<Option<u64>> {
    let mut s = open(addr, tag, Kind::MirrorSeq, patience)?;
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    let seq = u64::from_be_bytes(b);
    Ok((seq != u64::MAX).then_some(seq))
}

/// Replaces this process's mirror on the successor with a checkpoint of `store`.
pub fn push_mirror(addr: &str, tag: u64, store: &Store, patience: Duration) -> io::Result<()> {
    let mut s = open(addr, tag, Kind::PushMirror, patience)?;
    send_checkpoint(store, &mut s)?;
    let mut ok = [0u8; 1];
    s.read_exact(&mut ok)?;
    Ok(())
}

/// Streams a checkpoint of `store`: `[count u64]` then `[name len u64][name][size u64][bytes]` per file.
fn send_checkpoint(store: &Store, out: &mut TcpStream) -> io::Result<()> {
    let tmp = tempfile::Builder::new().prefix(".hams-checkpoint").tempdir_in(store.root())?;
    let dir = tmp.path().join("db");
    store.checkpoint(&dir).map_err(|e| io::Error::other(e.to_string()))?;
    let mut files: Vec<(String, PathBuf)> = vec![("FORMAT".into(), store.root().join("FORMAT"))];
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        files.push((format!("db/{}", entry.file_name().to_string_lossy()), entry.path()));
    }
    out.write_all(&(files.len() as u64).to_be_bytes())?;
    for (name, path) in files {
        let mut f = fs::File::open(&path)?;
        let size = f.metadata()?.len();
        out.write_all(&(name.len() as u64).to_be_bytes())?;
        out.write_all(name.as_bytes())?;
        out.write_all(&size.to_be_bytes())?;
        let sent = io::copy(&mut (&mut f).take(size), out)?;
        if sent != size {
            return Err(invalid(format!("{name} shrank while being sent")));
        }
    }
    Ok(())
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// Receives a checkpoint stream into `dir` (created; must not exist).
fn receive_checkpoint(conn: &mut TcpStream, dir: &Path) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    fs::create_dir_all(dir.join("db"))?;
    let count = read_u64(conn)?;
    if count > MAX_FILES {
        return Err(invalid(format!("a checkpoint of {count} files")));
    }
    for _ in 0..count {
        let len = read_u64(conn)?;
        if len > MAX_NAME {
            return Err(invalid(format!("a file name of {len} bytes")));
        }
        let mut name = vec![0u8; len as usize];
        conn.read_exact(&mut name)?;
        let name = String::from_utf8(name).map_err(|_| invalid("a file name that is not UTF-8".into()))?;
        let safe = name == "FORMAT"
            || name
                .strip_prefix("db/")
                .is_some_and(|n| !n.is_empty() && !n.contains('/') && n != "." && n != "..");
        if !safe {
            return Err(invalid(format!("an unexpected file {name:?} in a checkpoint")));
        }
        let size = read_u64(conn)?;
        let mut f = fs::File::create(dir.join(&name))?;
        let got = io::copy(&mut (&mut *conn).take(size), &mut f)?;
        if got != size {
            return Err(invalid(format!("{name} cut short ({got} of {size} bytes)")));
        }
        f.sync_all()?;
    }
    Ok(())
}
