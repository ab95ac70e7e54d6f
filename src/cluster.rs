//! Starting and supervising the processes of a cluster.
//!
//! timely cannot shrink a running cluster: when one process dies, the others
//! lose their connections to it and exit too. A supervisor (the local
//! launcher for `-n N`, or `hams run -p K` for its own process) restarts
//! every worker process that dies that way; they meet again on the same
//! addresses and resume from their disks (`hams_dataflow::resume`). A
//! supervisor that dies itself is for systemd or Kubernetes to restart.

use std::collections::{BTreeMap, VecDeque};
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cli::RunArgs;

/// Set on the worker processes a supervisor starts (they do not supervise).
pub const ENV_WORKER: &str = "HAMS_WORKER";
/// Which restart of its process this is (0: the first start).
pub const ENV_GENERATION: &str = "HAMS_GENERATION";
/// File a worker appends its process faults to before it kills itself.
pub const ENV_FAULT_LOG: &str = "HAMS_FAULT_LOG";
/// Process faults already injected, with their times: `index:µs,...`.
pub const ENV_FIRED: &str = "HAMS_FIRED_PROCESS_FAULTS";

/// A worker that exits with this code lost a peer (or its own footing) and
/// asks to be restarted.
pub const EXIT_RESTART: u8 = 75;

/// Restarts of one process within [`BUDGET_WINDOW`] beyond which it is given up.
const BUDGET: usize = 10;
const BUDGET_WINDOW: Duration = Duration::from_secs(60);

/// Loopback addresses only: a remote host's process must be started there.
fn is_local(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]")
}

/// Runs `processes` worker processes of this command on this host and supervises them.
pub fn launch(args: &RunArgs, processes: usize, hosts: Option<Vec<String>>) -> Result<ExitCode> {
    let hosts = match hosts {
        Some(h) => {
            if let Some(remote) = h.iter().take(processes).find(|a| !is_local(a)) {
                bail!("host {remote} is not local: start each process on its host with -p INDEX");
            }
            h
        }
        None => free_ports(processes)?,
    };
    let dir = std::env::temp_dir().join(format!("hams-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let hostfile = dir.join("hosts.txt");
    std::fs::write(
        &hostfile,
        hosts.iter().take(processes).map(|h| format!("{h}\n")).collect::<String>(),
    )?;
    let data_dir: PathBuf = args.data_dir.clone().unwrap_or_else(|| dir.join("data"));
    eprintln!(
        "hams: starting a local cluster of {processes} processes ({})",
        hosts[..processes].join(", ")
    );
    let mut s = Supervisor::new(
        args,
        processes,
        (0..processes).collect(),
        hostfile,
        data_dir,
        dir.join("faults.log"),
    )?;
    let code = s.run();
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        let _ = std::fs::remove_file(&s.hostfile);
        let _ = std::fs::remove_file(&s.fault_log);
        let _ = std::fs::remove_dir(&dir);
    }
    code
}

/// Runs process `process` of a cluster of `hosts` on this host and supervises it.
pub fn supervise(args: &RunArgs, hosts: &[String], process: usize) -> Result<ExitCode> {
    let data_dir = args
        .data_dir
        .clone()
        .context("a process of a cluster needs --data-dir: its state must outlive it")?;
    let scratch = std::env::temp_dir().join(format!("hams-process-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let hostfile = scratch.join("hosts.txt");
    std::fs::write(&hostfile, hosts.iter().map(|h| format!("{h}\n")).collect::<String>())?;
    let mut s = Supervisor::new(args, hosts.len(), vec![process], hostfile, data_dir, scratch.join("faults.log"))?;
    let code = s.run();
    let _ = std::fs::remove_dir_all(&scratch);
    code
}

/// One supervised worker process.
struct Slot {
    process: usize,
    child: Option<Child>,
    generation: u32,
    restarts: VecDeque<Instant>,
    done: Option<i32>,
}

struct Supervisor {
    exe: PathBuf,
    forwarded: Vec<String>,
    processes: usize,
    hostfile: PathBuf,
    data_dir: PathBuf,
    fault_log: PathBuf,
    run_id: String,
    wipe: bool,
    /// Process faults injected so far, with their times (µs since the Unix epoch).
    fired: BTreeMap<usize, u64>,
    slots: Vec<Slot>,
}

/// The user asked to stop: no more restarts.
static STOPPING: AtomicBool = AtomicBool::new(false);
/// The cluster's processes, for the signal handler.
static CHILDREN: [AtomicI32; 64] = [const { AtomicI32::new(0) }; 64];

impl Supervisor {
    fn new(args: &RunArgs, processes: usize, mine: Vec<usize>, hostfile: PathBuf, data_dir: PathBuf, fault_log: PathBuf) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the hams binary")?;
        // Forward the user's arguments minus the cluster ones, which are set per process.
        let mut forwarded = Vec::new();
        let mut skip = false;
        for a in std::env::args().skip(1) {
            if skip {
                skip = false;
                continue;
            }
            match a.as_str() {
                "run" if forwarded.is_empty() => continue,
                "-h" | "--hostfile" | "-n" | "--processes" | "-p" | "--process" | "--data-dir" => skip = true,
                _ if ["--hostfile=", "--processes=", "--process=", "--data-dir="]
                    .iter()
                    .any(|p| a.starts_with(p)) => {}
                _ if a.starts_with("-n") || a.starts_with("-p") => {}
                _ => forwarded.push(a),
            }
        }
        let _ = std::fs::remove_file(&fault_log);
        Ok(Supervisor {
            exe,
            forwarded,
            processes,
            hostfile,
            data_dir,
            fault_log,
            run_id: format!("{:016x}", hams_operators::model::noise::Noise::entropy_seed()),
            wipe: args.workload.wipe,
            fired: BTreeMap::new(),
            slots: mine
                .into_iter()
                .map(|process| Slot {
                    process,
                    child: None,
                    generation: 0,
                    restarts: VecDeque::new(),
                    done: None,
                })
                .collect(),
        })
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let slot = &self.slots[i];
        let fired: Vec<String> = self.fired.iter().map(|(f, t)| format!("{f}:{t}")).collect();
        let mut cmd = Command::new(&self.exe);
        // Its own process group, so a terminal's Ctrl-C reaches it once, through us;
        // and it dies with us (prctl only sets a flag on the child).
        cmd.process_group(0);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .arg("run")
            .args(&self.forwarded)
            .args(["-n", &self.processes.to_string(), "-p", &slot.process.to_string()])
            .arg("-h")
            .arg(&self.hostfile)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env(ENV_WORKER, "1")
            .env(hams_dataflow::run::ENV_RUN_ID, &self.run_id)
            .env(ENV_GENERATION, slot.generation.to_string())
            .env(ENV_FAULT_LOG, &self.fault_log)
            .env(ENV_FIRED, fired.join(","))
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting process {}", slot.process))?;
        CHILDREN[slot.process.min(CHILDREN.len() - 1)].store(child.id() as i32, Ordering::SeqCst);
        self.slots[i].child = Some(child);
        Ok(())
    }

    fn run(&mut self) -> Result<ExitCode> {
        for i in 0..self.slots.len() {
            self.spawn(i)?;
        }
        forward_signals();
        let mut failure: Option<i32> = None;
        loop {
            let mut exited = Vec::new();
            for (i, slot) in self.slots.iter_mut().enumerate() {
                if let Some(c) = slot.child.as_mut() {
                    if let Some(status) = c.try_wait()? {
                        slot.child = None;
                        exited.push((i, status));
                    }
                }
            }
            for (i, status) in exited {
                self.read_fault_log(i);
                let p = self.slots[i].process;
                let restart = wants_restart(status) && failure.is_none() && !STOPPING.load(Ordering::SeqCst);
                if !restart {
                    let code = status.code().unwrap_or(3);
                    if code != 0 {
                        eprintln!("hams: process {p} {status}");
                        failure = failure.or(Some(code));
                    }
                    self.slots[i].done = Some(code);
                    continue;
                }
                let slot = &mut self.slots[i];
                let now = Instant::now();
                slot.restarts.push_back(now);
                while slot.restarts.front().is_some_and(|t| now - *t > BUDGET_WINDOW) {
                    slot.restarts.pop_front();
                }
                if slot.restarts.len() > BUDGET {
                    eprintln!(
                        "hams: process {p} failed {} times within {BUDGET_WINDOW:?}; giving up",
                        slot.restarts.len()
                    );
                    failure = Some(3);
                    slot.done = Some(3);
                    continue;
                }
                slot.generation += 1;
                eprintln!("hams: process {p} {status}; restarting it (restart {})", slot.generation);
                self.spawn(i)?;
            }
            if failure.is_some() {
                // One process cannot go on: the cluster cannot either.
                for slot in &mut self.slots {
                    if let Some(c) = slot.child.as_mut() {
                        let _ = c.kill();
                    }
                }
            }
            if self.slots.iter().all(|s| s.child.is_none()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let worst = self.slots.iter().filter_map(|s| s.done).max().unwrap_or(0);
        Ok(ExitCode::from(worst.clamp(0, 255) as u8))
    }

    /// Learns of the process faults the worker in slot `i` injected into
    /// itself, and wipes its data directory if asked (a host lost with its disk).
    fn read_fault_log(&mut self, i: usize) {
        let Ok(text) = std::fs::read_to_string(&self.fault_log) else {
            return;
        };
        for line in text.lines() {
            let mut w = line.split_whitespace();
            let (Some("fault"), Some(f), Some(t)) = (w.next(), w.next(), w.next()) else {
                continue;
            };
            let (Ok(f), Ok(t)) = (f.parse::<usize>(), t.parse::<u64>()) else {
                continue;
            };
            if self.fired.insert(f, t).is_none() && self.wipe {
                // The host is lost with its disk: its own store and the mirror it kept.
                let p = self.slots[i].process;
                let pred = (p + self.processes - 1) % self.processes;
                for dir in [self.data_dir.join(format!("p{p}")), self.data_dir.join(format!("m{pred}"))] {
                    eprintln!("hams: wiping {} (--wipe: the host is lost with its disk)", dir.display());
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
    }
}

/// A worker killed by a signal, or one that lost a peer or panicked, is
/// restarted; one that finished (0), found its run inconsistent (1) or met
/// an error (2) is not.
fn wants_restart(status: ExitStatus) -> bool {
    match (status.code(), status.signal()) {
        (Some(c), _) => c == EXIT_RESTART as i32 || c == 101,
        (None, Some(sig)) => sig != libc::SIGINT && sig != libc::SIGTERM,
        _ => false,
    }
}

/// Ctrl-C or SIGTERM to the supervisor goes to every process it runs (they
/// drain on the first, quit on the second), and stops all restarts.
fn forward_signals() {
    extern "C" fn on_signal(sig: libc::c_int) {
        STOPPING.store(true, Ordering::SeqCst);
        for c in &CHILDREN {
            let pid = c.load(Ordering::SeqCst);
            if pid > 0 {
                // SAFETY: kill is async-signal-safe; the pids are our children.
                unsafe { libc::kill(pid, sig) };
            }
        }
    }
    // SAFETY: the handler only stores and reads atomics and calls kill.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// `n` loopback addresses whose ports are free, each with the next port
/// free too (a process's mirror listens there).
fn free_ports(n: usize) -> Result<Vec<String>> {
    let mut held = Vec::new();
    let mut out = Vec::new();
    while out.len() < n {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        let Some(next) = port.checked_add(1) else { continue };
        if let Ok(m) = TcpListener::bind(("127.0.0.1", next)) {
            out.push(format!("127.0.0.1:{port}"));
            held.push(m);
        }
        held.push(l);
    }
    Ok(out)
}

/// Process faults already injected (from a supervisor), by index, with their times.
pub fn fired() -> BTreeMap<usize, u64> {
    std::env::var(ENV_FIRED)
        .unwrap_or_default()
        .split(',')
        .filter_map(|x| {
            let (f, t) = x.split_once(':')?;
            Some((f.parse().ok()?, t.parse().ok()?))
        })
        .collect()
}

/// True in a worker process a supervisor started.
pub fn is_worker() -> bool {
    std::env::var_os(ENV_WORKER).is_some()
}

/// In a cluster's worker process, any panic (a lost peer surfaces as one in
/// timely's communication threads) exits at once with [`EXIT_RESTART`], for
/// the supervisor to restart the process; waiting would leave it half dead.
pub fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current().name().unwrap_or("?").to_string();
        if thread.starts_with("timely:send") || thread.starts_with("timely:recv") {
            // A peer process is gone: expected, say it in one line.
            let what = info.payload().downcast_ref::<String>().map_or("connection lost", String::as_str);
            eprintln!("hams: lost a peer process ({what}); restarting with the cluster");
        } else {
            default(info);
            eprintln!("hams: thread {thread} panicked; this process exits for its supervisor to restart it");
        }
        std::process::exit(EXIT_RESTART as i32);
    }));
}
