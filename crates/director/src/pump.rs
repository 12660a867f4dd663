//! Relay of one TCP flow, both directions at once, with half-close and an
//! idle timeout.
//!
//! On Linux bytes go socket → pipe → socket with splice(2) inside the kernel;
//! they never enter user space. Elsewhere (or when asked) a userspace copy
//! through a buffer does the same job. Readiness comes from tokio's reactor (`readable`/`writable` +
//! `try_io`), so a flow costs no thread. rustix's `splice` is a safe wrapper:
//! no `unsafe` here.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per splice call (the default pipe capacity).
const CHUNK: usize = 64 * 1024;

/// How bytes move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// splice(2) through a pipe: zero-copy (Linux).
    Splice,
    /// read into a buffer, write out: portable.
    Copy,
    /// Copy while messages are small (a trip through a pipe costs more than
    /// copying 100 bytes); once a read fills the whole buffer, the direction
    /// carries bulk data and switches to splice.
    Auto,
}

/// Relays until both directions have seen EOF, one fails, or nothing moved
/// for `idle`. Returns bytes (a → b, b → a).
pub async fn relay(
    a: &TcpStream,
    b: &TcpStream,
    idle: Duration,
    mode: Mode,
) -> io::Result<(u64, u64)> {
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let ab = one_way(a, b, &last, start, mode);
    let ba = one_way(b, a, &last, start, mode);
    let watchdog = async {
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = since + idle;
            let now = start.elapsed();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(deadline - now).await;
        }
    };
    tokio::pin!(ab, ba, watchdog);
    let (mut a_done, mut b_done) = (None, None);
    loop {
        tokio::select! {
            r = &mut ab, if a_done.is_none() => { a_done = Some(r?); }
            r = &mut ba, if b_done.is_none() => { b_done = Some(r?); }
            _ = &mut watchdog => return Err(io::Error::new(io::ErrorKind::TimedOut, "flow idle timeout")),
        }
        if let (Some(x), Some(y)) = (a_done, b_done) {
            return Ok((x, y));
        }
    }
}

async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    last: &AtomicU64,
    start: Instant,
    mode: Mode,
) -> io::Result<u64> {
    match mode {
        Mode::Splice => one_way_splice(from, to, last, start, 0).await,
        Mode::Copy => one_way_copy(from, to, last, start, false).await,
        Mode::Auto => one_way_copy(from, to, last, start, true).await,
    }
}

async fn one_way_copy(
    from: &TcpStream,
    to: &TcpStream,
    last: &AtomicU64,
    start: Instant,
    upgrade_to_splice: bool,
) -> io::Result<u64> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        from.readable().await?;
        let n = match from.try_read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            let _ = rustix::net::shutdown(to, rustix::net::Shutdown::Write);
            return Ok(total);
        }
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        let mut off = 0;
        while off < n {
            to.writable().await?;
            match to.try_write(&buf[off..n]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "peer stopped taking data",
                    ));
                }
                Ok(m) => off += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        if upgrade_to_splice && n == buf.len() {
            return one_way_splice(from, to, last, start, total).await;
        }
    }
}

async fn one_way_splice(
    from: &TcpStream,
    to: &TcpStream,
    last: &AtomicU64,
    start: Instant,
    already: u64,
) -> io::Result<u64> {
    let (pipe_r, pipe_w): (OwnedFd, OwnedFd) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    let mut total = already;
    loop {
        // Socket -> pipe.
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from, None, &pipe_w, None, CHUNK, flags).map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // EOF: pass the half-close on; the other direction keeps going.
            let _ = rustix::net::shutdown(to, rustix::net::Shutdown::Write);
            return Ok(total);
        }
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        // Pipe -> socket, until the pipe is empty.
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(&pipe_r, None, to, None, left, flags).map_err(io::Error::from)
            }) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "peer stopped taking data",
                    ));
                }
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A pair of connected sockets: (the end we hold, the end the relay holds).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (b, _) = l.accept().await.expect("accept");
        (a, b)
    }

    /// 1 MiB each way through the relay in every mode, then half-close both
    /// ways: every byte arrives in order and the counts are right.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_both_ways_in_every_mode() {
        for mode in [Mode::Copy, Mode::Splice, Mode::Auto] {
            let (mut client, relay_a) = pair().await;
            let (relay_b, mut server) = pair().await;
            let relay = tokio::spawn(async move {
                relay(&relay_a, &relay_b, Duration::from_secs(10), mode).await
            });
            let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
            let (d1, d2) = (data.clone(), data.clone());
            let (mut cr, mut cw) = client.split();
            let (mut sr, mut sw) = server.split();
            let up = async {
                cw.write_all(&d1).await.expect("client write");
                cw.shutdown().await.expect("client half-close");
                let mut got = Vec::new();
                sr.read_to_end(&mut got).await.expect("server read");
                got
            };
            let down = async {
                sw.write_all(&d2).await.expect("server write");
                sw.shutdown().await.expect("server half-close");
                let mut got = Vec::new();
                cr.read_to_end(&mut got).await.expect("client read");
                got
            };
            let (at_server, at_client) = tokio::join!(up, down);
            assert!(at_server == data, "{mode:?}: client to server bytes differ");
            assert!(at_client == data, "{mode:?}: server to client bytes differ");
            let (ab, ba) = relay.await.expect("join").expect("relay");
            assert_eq!((ab, ba), (1 << 20, 1 << 20), "{mode:?}");
        }
    }
}
