//! The TCP mesh between the processes of a cluster, set up by hams rather
//! than by timely: peers are retried every few milliseconds (timely waits a
//! second between tries, too slow for a restart), strangers are told apart
//! by a handshake, and keepalives notice a peer host that vanished without
//! closing its connections. Timely then runs over these sockets.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::ProcessBuilder;
use timely::communication::{AllocatorBuilder, Hooks};

/// What a process sends first on every connection.
const MAGIC: &[u8; 8] = b"HAMSNET1";

/// How often to retry a peer that is not up yet.
const RETRY: Duration = Duration::from_millis(10);

/// One process's end of the mesh, ready for timely: allocators for its
/// worker threads and the guard of the communication threads.
pub(crate) type Mesh = (Vec<AllocatorBuilder>, Box<dyn std::any::Any + Send>);

/// Connects process `me` to every other process of `addresses` (lower
/// indices are dialled, higher ones accepted), tagging the connections with
/// `cluster` (a hash of the run) so a process of another run is refused.
pub(crate) fn connect(addresses: &[String], me: usize, threads: usize, cluster: u64, patience: Duration) -> io::Result<Mesh> {
    let deadline = Instant::now() + patience;
    let listener = bind(&addresses[me], deadline)?;
    listener.set_nonblocking(true)?;
    let mut sockets: Vec<Option<TcpStream>> = (0..addresses.len()).map(|_| None).collect();
    let mut dialled: Vec<bool> = (0..addresses.len()).map(|i| i >= me).collect();
    while sockets.iter().enumerate().any(|(i, s)| i != me && s.is_none()) {
        if Instant::now() > deadline {
            let missing: Vec<usize> = (0..addresses.len()).filter(|i| *i != me && sockets[*i].is_none()).collect();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("processes {missing:?} did not connect within {patience:?}"),
            ));
        }
        let mut progress = false;
        for (i, addr) in addresses.iter().enumerate().take(me) {
            if dialled[i] {
                continue;
            }
            if let Ok(mut s) = TcpStream::connect_timeout(&resolve(addr)?, Duration::from_millis(200)) {
                if hello(&mut s, me, cluster).is_ok() {
                    sockets[i] = Some(s);
                    dialled[i] = true;
                    progress = true;
                }
            }
        }
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                match greeting(&mut s, cluster) {
                    Ok(i) if i > me && i < addresses.len() && sockets[i].is_none() => {
                        s.set_read_timeout(None)?;
                        sockets[i] = Some(s);
                        progress = true;
                    }
                    Ok(i) => tracing::warn!(peer = i, "unexpected peer connection refused"),
                    Err(e) => tracing::warn!(error = %e, "a connection that is not a hams peer of this run was refused"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if !progress {
            std::thread::sleep(RETRY);
        }
    }
    for s in sockets.iter().flatten() {
        tune(s)?;
    }
    let process = ProcessBuilder::new_typed_vector(threads, Hooks::default().refill, None);
    let (builders, guard) = initialize_networking_from_sockets(process, sockets, me, threads, Hooks::default())?;
    Ok((builders.into_iter().map(AllocatorBuilder::Tcp).collect(), Box::new(guard)))
}

/// Binds this process's address; the previous life of this process may
/// still hold it for a moment.
fn bind(addr: &str, deadline: Instant) -> io::Result<TcpListener> {
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => std::thread::sleep(RETRY),
            Err(e) => return Err(io::Error::new(e.kind(), format!("binding {addr}: {e}"))),
        }
    }
}

fn resolve(addr: &str) -> io::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: no address")))
}

fn hello(s: &mut TcpStream, me: usize, cluster: u64) -> io::Result<()> {
    s.write_all(MAGIC)?;
    s.write_all(&cluster.to_be_bytes())?;
    s.write_all(&(me as u64).to_be_bytes())
}

fn greeting(s: &mut TcpStream, cluster: u64) -> io::Result<usize> {
    let mut buf = [0u8; 24];
    s.read_exact(&mut buf)?;
    if &buf[..8] != MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a hams peer"));
    }
    if buf[8..16] != cluster.to_be_bytes() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "a peer of another run"));
    }
    Ok(u64::from_be_bytes(buf[16..24].try_into().expect("8 bytes")) as usize)
}

/// No delay; keepalives and a send timeout, so a peer host that vanishes
/// without closing its connections is noticed in seconds, not hours.
fn tune(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let sock = socket2::SockRef::from(s);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(2))
        .with_interval(Duration::from_secs(1))
        .with_retries(3);
    sock.set_tcp_keepalive(&keepalive)?;
    sock.set_tcp_user_timeout(Some(Duration::from_secs(5)))
}
