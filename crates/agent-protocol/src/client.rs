//! The plugins' side: a blocking connection to the agent, bounded at every step, and the
//! process-wide memory that there is no agent.
//!
//! A plugin never waits long for an agent that is not there or not answering:
//!
//! - no socket file, or nobody listening on it: known at once (`ENOENT`, `ECONNREFUSED`);
//! - an agent too busy to accept (its backlog full): known at once (`EAGAIN`, the connect is
//!   non-blocking);
//! - an agent that accepted but does not greet within [`GREETING_WAIT`]: given up;
//! - a listener that is not root's (the socket's path comes from the environment): refused.
//!
//! Then the plugin does the work itself, synchronously, and every later use in the same
//! process goes straight to that (one debug line says so, once).

use crate::frame::{self, Frame, Incoming};
use crate::message::{Hello, Reply, Request};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a plugin waits for the agent's greeting after connecting. The agent greets from
/// its accept loop within microseconds; the bound only has to cover the agent waiting for a
/// CPU on a busy node. The kernel's scheduler gives every runnable task its turn within one
/// scheduling period (`sched_latency`, 6 ms × (1 + log2 CPUs), so 12 ms on 2 CPUs and at
/// most 24 ms on large nodes), so 25 ms is one full period on a small node to spare; and it
/// is all an agent that is wedged (stopped, deadlocked) before it greets can cost a call,
/// about one veth deletion's RCU wait, after which the call does its work itself. An agent
/// that wedges after greeting costs a call more: [`ACCEPT_WAIT`] for kernel work, and the
/// etcd request's own timeout (plus 1 s) for an etcd request, as a direct connection to a
/// wedged etcd would.
pub const GREETING_WAIT: Duration = Duration::from_millis(25);

/// How long a plugin waits for kernel work to be taken ([`Reply::Accepted`]): the agent
/// only queues it. Past this the plugin does the work itself; the agent's copy, if it took
/// it after all, finds it done (every such piece of work is idempotent).
pub const ACCEPT_WAIT: Duration = Duration::from_secs(1);

/// Set once this process found no agent, or lost it: from then on it works alone.
static ALONE: AtomicBool = AtomicBool::new(false);

/// Notes that this process works without the agent from now on, and says so once.
pub fn work_alone(why: &str) {
    if !ALONE.swap(true, Ordering::Relaxed) {
        log::debug!("no calico-node agent ({why}): this call does its work itself");
    }
}

/// Whether this process has given up on the agent.
pub fn is_alone() -> bool {
    ALONE.load(Ordering::Relaxed)
}

/// Why a call got no reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing of the request reached the agent: it did nothing.
    #[error("the request did not reach the agent: {0}")]
    NotSent(std::io::Error),
    /// The request went out but no (readable) reply came: whatever it asked may or may not
    /// have been done.
    #[error("the agent did not answer: {0}")]
    NoReply(String),
}

/// A connection to the agent.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    incoming: Incoming,
    /// The agent's version (once greeted).
    pub agent: String,
    /// The bound on a greeting not read yet ([`Connection::to_agent`] reads it with the
    /// first call).
    greeting_due: Option<Duration>,
    /// Read into, kept for the connection's life (a fresh 64 KiB buffer per read was 16
    /// page faults, ~60 µs here).
    buf: Vec<u8>,
}

impl Connection {
    /// The node's agent at [`crate::socket_path`], unless this process already works alone;
    /// `None` (and this process works alone from now on) if none answers.
    pub fn to_agent() -> Option<Connection> {
        if is_alone() {
            return None;
        }
        let path = crate::socket_path();
        // The greeting is read with the first call: the agent accepts and greets while the
        // caller does its own work meanwhile (a plugin's ADD reads its config and takes the
        // host lock before its first request), instead of a wait here.
        match Connection::connect(&path, GREETING_WAIT) {
            Ok(c) => Some(c),
            Err(why) => {
                work_alone(&format!("{}: {why}", path.display()));
                None
            }
        }
    }

    /// Connects to the agent at `path` and waits up to `greeting` for its hello.
    pub fn open(path: &Path, greeting: Duration) -> Result<Connection, String> {
        let mut c = Connection::connect(path, greeting)?;
        c.greeted()?;
        Ok(c)
    }

    /// Connects to the agent at `path`, its hello to be read (within `greeting`) before the
    /// first request is sent.
    fn connect(path: &Path, greeting: Duration) -> Result<Connection, String> {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| format!("socket: {e}"))?;
        let addr = SocketAddrUnix::new(path).map_err(|e| format!("socket path: {e}"))?;
        // Non-blocking: an agent whose backlog is full is EAGAIN here, not a wait.
        rustix::net::connect(&fd, &addr).map_err(|e| match e {
            rustix::io::Errno::NOENT => "no socket".to_string(),
            rustix::io::Errno::CONNREFUSED => "nobody listens".to_string(),
            rustix::io::Errno::AGAIN => "too busy to accept".to_string(),
            other => format!("connect: {other}"),
        })?;
        // Only root's agent gets a pod's namespace or etcd traffic: the socket's path comes
        // from the environment a runtime passes on, so the peer is checked, not the path.
        let peer = rustix::net::sockopt::socket_peercred(&fd)
            .map_err(|e| format!("peer credentials: {e}"))?;
        if peer.uid.as_raw() != 0 {
            return Err(format!(
                "the listener is not root's (uid {}, pid {})",
                peer.uid.as_raw(),
                peer.pid.as_raw_nonzero()
            ));
        }
        let stream = UnixStream::from(fd);
        stream
            .set_nonblocking(false)
            .map_err(|e| format!("socket mode: {e}"))?;
        // A request larger than the socket's buffer, sent to an agent that stopped reading,
        // must not block the call for ever.
        stream
            .set_write_timeout(Some(ACCEPT_WAIT))
            .map_err(|e| format!("socket mode: {e}"))?;
        Ok(Connection {
            stream,
            incoming: Incoming::default(),
            agent: String::new(),
            greeting_due: Some(greeting),
            buf: Vec::new(),
        })
    }

    /// Reads the agent's hello if not read yet: its version, or why it will not serve us.
    fn greeted(&mut self) -> Result<(), String> {
        let Some(wait) = self.greeting_due.take() else {
            return Ok(());
        };
        let frame = self
            .read_frame(wait)
            .map_err(|e| format!("no greeting: {e}"))?;
        match frame.decode().map_err(|e| format!("greeting: {e}"))? {
            Hello::Welcome { agent } => self.agent = agent,
            Hello::Refused(why) => return Err(format!("refused: {why}")),
        }
        Ok(())
    }

    /// Sends `request` (with `descriptors`, see [`Request::descriptors`]) and waits up to
    /// `wait` for the reply.
    pub fn call(
        &mut self,
        request: &Request,
        descriptors: &[BorrowedFd<'_>],
        wait: Duration,
    ) -> Result<Reply, CallError> {
        // Nothing is sent before the agent has said it serves us.
        self.greeted()
            .map_err(|e| CallError::NotSent(std::io::Error::other(e)))?;
        let bytes = frame::encode(request)
            .map_err(|e| CallError::NotSent(std::io::Error::other(e.to_string())))?;
        // A write that fails before any byte left is "not sent"; a blocking unix socket
        // writes a frame whole or fails at once (the peer gone), so that is the case here.
        frame::send(self.stream.as_fd(), &bytes, descriptors).map_err(CallError::NotSent)?;
        let frame = self
            .read_frame(wait)
            .map_err(|e| CallError::NoReply(e.to_string()))?;
        frame
            .decode()
            .map_err(|e| CallError::NoReply(format!("unreadable reply: {e}")))
    }

    /// Reads one frame, within `wait` in all.
    fn read_frame(&mut self, wait: Duration) -> std::io::Result<Frame> {
        let deadline = Instant::now() + wait;
        if self.buf.is_empty() {
            self.buf = vec![0u8; 16 << 10];
        }
        loop {
            if let Some(f) = self
                .incoming
                .next_frame()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
            {
                return Ok(f);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
            let n = match self.stream.read(&mut self.buf) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
                Err(e) => return Err(e),
            };
            self.incoming.push(&self.buf[..n], Vec::new());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket at the agent's path whose listener is not root (a runtime may pass any
    /// `CALICO_NODE_SOCKET`) gets nothing: refused before a byte is sent.
    #[test]
    fn a_listener_that_is_not_root_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Who we are: the owner of what we just made.
        let root = std::os::unix::fs::MetadataExt::uid(&dir.path().metadata().expect("stat")) == 0;
        if !root {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI runs the tests as root"
            );
            eprintln!("skipped: needs root (to start a listener as another user)");
            return;
        }
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod");
        let path = dir.path().join("agent.sock");
        // Listens as nobody until its stdin closes (when this test ends, also by a panic).
        let mut listener = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
            ])
            .arg(
                "import socket, sys\n\
                 s = socket.socket(socket.AF_UNIX)\n\
                 s.bind(sys.argv[1]); s.listen(8)\n\
                 print('listening', flush=True)\n\
                 sys.stdin.read()",
            )
            .arg(&path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("setpriv python3");
        // Listening once it says so (the file exists from bind(), before listen()); it
        // says so or ends at once.
        let mut said = String::new();
        if let Some(out) = listener.stdout.take() {
            std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut said)
                .expect("the listener's word");
        }
        assert_eq!(said.trim(), "listening", "the listener did not start");
        let outcome = Connection::open(&path, GREETING_WAIT);
        drop(listener.stdin.take());
        let _ = listener.wait();
        let Err(e) = outcome else {
            panic!("a listener that is not root was used");
        };
        assert!(e.contains("not root's (uid 65534"), "{e}");
    }

    /// A connection whose greeting is read with the first call: a listener that never
    /// greets costs the call the greeting's bound, and the request is reported not sent
    /// (nothing may have been done: the caller does the work itself).
    #[test]
    fn a_deferred_greeting_that_never_comes_fails_the_first_call_as_not_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let mut c = Connection::connect(&path, Duration::from_millis(30)).expect("connected");
        let started = Instant::now();
        let outcome = c.call(
            &Request::Health(crate::message::Probe::Live),
            &[],
            ACCEPT_WAIT,
        );
        assert!(matches!(outcome, Err(CallError::NotSent(_))), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn no_socket_and_a_silent_listener_are_told_apart_and_quick() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let e = Connection::open(&path, GREETING_WAIT).expect_err("no socket");
        assert_eq!(e, "no socket");
        // A listener that never greets (a wedged agent): given up after the bound.
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let started = Instant::now();
        let e = Connection::open(&path, Duration::from_millis(30)).expect_err("silent");
        assert!(e.starts_with("no greeting"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
