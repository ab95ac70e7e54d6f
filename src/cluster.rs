//! Starting every process of a local cluster: `hams run -n 3 ...` without `-p`.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{bail, Context, Result};

use crate::cli::RunArgs;

/// Loopback addresses only: a remote host's process must be started there.
fn is_local(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]")
}

/// Runs `processes` copies of this command as processes 0..n on this host.
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
    let exe = std::env::current_exe().context("locating the hams binary")?;
    // Forward the user's arguments minus the cluster ones, which we set per child.
    let mut forwarded = Vec::new();
    let mut skip = false;
    for a in std::env::args().skip(1) {
        if skip {
            skip = false;
            continue;
        }
        match a.as_str() {
            "run" if forwarded.is_empty() => continue,
            "-h" | "--hostfile" | "-n" | "--processes" | "--data-dir" => skip = true,
            _ if a.starts_with("--hostfile=") || a.starts_with("--processes=") || a.starts_with("--data-dir=") => {}
            _ => forwarded.push(a),
        }
    }
    eprintln!(
        "hams: starting a local cluster of {processes} processes ({})",
        hosts[..processes].join(", ")
    );
    let mut children = Vec::new();
    for p in 0..processes {
        let mut cmd = Command::new(&exe);
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
            .args(&forwarded)
            .args(["-n", &processes.to_string(), "-p", &p.to_string()])
            .arg("-h")
            .arg(&hostfile)
            .arg("--data-dir")
            .arg(&data_dir)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting process {p}"))?;
        CHILDREN[p.min(CHILDREN.len() - 1)].store(child.id() as i32, Ordering::SeqCst);
        children.push(child);
    }
    forward_signals();
    let mut worst = 0;
    for (p, mut c) in children.into_iter().enumerate() {
        let status = c.wait()?;
        let code = status.code().unwrap_or(3);
        if code != 0 {
            eprintln!("hams: process {p} {status}");
        }
        worst = worst.max(code);
    }
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(ExitCode::from(worst.clamp(0, 255) as u8))
}

/// The cluster's processes, for the signal handler.
static CHILDREN: [AtomicI32; 64] = [const { AtomicI32::new(0) }; 64];

/// Ctrl-C or SIGTERM to the launcher goes to every process of the cluster (they
/// drain on the first, quit on the second), so no process outlives it.
fn forward_signals() {
    extern "C" fn on_signal(sig: libc::c_int) {
        for c in &CHILDREN {
            let pid = c.load(Ordering::SeqCst);
            if pid > 0 {
                // SAFETY: kill is async-signal-safe; the pids are our children.
                unsafe { libc::kill(pid, sig) };
            }
        }
    }
    // SAFETY: the handler only reads atomics and calls kill.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

fn free_ports(n: usize) -> Result<Vec<String>> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<_>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<std::io::Result<_>>()?)
}
