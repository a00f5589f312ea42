//! A per-node keeper of etcd connections whose TLS handshake is already done.
//!
//! A mutual-TLS handshake with etcd costs about 1.3 ms here (a certificate chain verified
//! and a signature made on each side, and etcd's goroutines scheduled in between): a third
//! of a pod's ADD. A short-lived plugin cannot resume a TLS session (rustls keeps sessions
//! in memory only), so the handshake is moved out of the call instead:
//!
//! - The keeper is this executable again (each binary's `main` calls [`run_if_requested`]
//!   first), detached, listening on an abstract unix socket: private to the network
//!   namespace, gone with the process, named after everything the connection depends on
//!   (the namespace, the endpoints, the certificate files as they are now, the executable).
//! - It holds a few connections to etcd with the handshake done. A call takes one and
//!   speaks HTTP/2 through it in the clear; the keeper only encrypts and forwards bytes.
//!   So every call still has a connection of its own and the same protocol end to end, and
//!   what it reads and writes is exactly what it would over a direct connection.
//! - Access: a caller is served only if it runs as the keeper's user and sees the same
//!   client key file the keeper uses (resolved inside the caller's root): nobody gains
//!   access to etcd they did not have already. The other way round, a caller trusts only
//!   a keeper that is the same executable run by its user, since anyone in the namespace
//!   can bind an abstract name.
//! - Lifetime: it exits after `IDLE` without calls, after `MAX_LIFE` in any case, and
//!   once etcd cannot be reached. A warm connection is handed out within `WARM_MAX` of
//!   its handshake (servers drop connections that stay silent too long).
//! - Failure: a call that finds no keeper, or no warm connection, connects directly as it
//!   would without one (and, if there was no keeper, starts one for the calls after it).

use crate::config::EtcdConfig;
use crate::error::EtcdError;
use crate::transport::{Stream, Target, dial};
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// The environment that turns an executable into a keeper: the socket's abstract name.
const KEEPER: &str = "CALICO_ETCD_KEEPER";
const ENDPOINTS: &str = "CALICO_ETCD_KEEPER_ENDPOINTS";
const CA: &str = "CALICO_ETCD_KEEPER_CA";
const CERT: &str = "CALICO_ETCD_KEEPER_CERT";
const KEY: &str = "CALICO_ETCD_KEEPER_KEY";
/// The process name the keeper shows (`ps`, `pgrep -f`).
pub const PROCESS_NAME: &str = "calico-etcd-keeper";
/// Connections kept ready.
const POOL: usize = 2;
/// Quiet time after which the keeper exits.
const IDLE: Duration = Duration::from_secs(8);
/// Age after which a warm connection is dropped unused (etcd's HTTP/2 server closes a
/// connection that has not sent its preface within 10 s).
const WARM_MAX: Duration = Duration::from_secs(8);
/// Bound on a keeper's life whatever happens (a new binary or new certificates also make a
/// new keeper at once, since they change its name).
const MAX_LIFE: Duration = Duration::from_secs(600);
/// How long a call waits for the keeper's answer before connecting directly.
const CLAIM_WAIT: Duration = Duration::from_millis(200);
/// Bound on one forwarded session.
const SESSION_MAX: Duration = Duration::from_secs(300);
/// How often the keeper looks at its pool and its age.
const TICK: Duration = Duration::from_millis(200);

/// The keeper a connection config would use.
#[derive(Debug, Clone)]
pub struct Keeper {
    name: Vec<u8>,
    config: EtcdConfig,
}

/// What asking the keeper for a connection gave.
pub enum Claim {
    /// A connection to etcd, TLS done: speak HTTP/2 in the clear.
    Served(UnixStream),
    /// No keeper listens here.
    Absent,
    /// The keeper has no connection ready, or would not serve us.
    Declined,
}

fn identity(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "{}:{}:{}:{}.{}",
            m.dev(),
            m.ino(),
            m.len(),
            m.mtime(),
            m.mtime_nsec()
        ),
        Err(_) => "-".into(),
    }
}

impl Keeper {
    /// The keeper for `config`, if it would help: TLS endpoints only (a plain connection
    /// costs a tenth of a millisecond).
    pub fn for_config(config: &EtcdConfig) -> Option<Keeper> {
        if !config.endpoints.iter().any(|e| e.starts_with("https://")) {
            return None;
        }
        let mut h = Sha256::new();
        h.update(b"calico-etcd-keeper v1\n");
        // The namespace by its inode number alone: its nsfs inode is made afresh (with a new
        // mtime) whenever nothing holds it open.
        let netns = std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino());
        h.update(format!("{netns}\n").as_bytes());
        h.update(identity(Path::new("/proc/self/exe")).as_bytes());
        h.update(b"\n");
        for e in &config.endpoints {
            h.update(e.as_bytes());
            h.update(b",");
        }
        for f in [&config.ca_cert_file, &config.cert_file, &config.key_file] {
            h.update(b"\n");
            if let Some(f) = f {
                h.update(f.as_os_str().as_encoded_bytes());
                h.update(identity(f).as_bytes());
            }
        }
        let digest = h.finalize();
        Some(Keeper {
            name: format!("{PROCESS_NAME}-{}", hex_prefix(&digest, 12)).into_bytes(),
            config: config.clone(),
        })
    }

    /// The abstract socket name (without the leading NUL).
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// Asks the keeper for a connection. Whoever listens must be this program, run by our
    /// user: an abstract name can be taken by anyone in the namespace.
    pub async fn claim(&self) -> Claim {
        let asked = async {
            let fd = socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(|_| Claim::Declined)?;
            let addr = UnixAddr::new_abstract(&self.name).map_err(|_| Claim::Declined)?;
            // Non-blocking: a keeper too busy to accept (a full backlog) is EAGAIN.
            match connect(fd.as_raw_fd(), &addr) {
                Ok(()) => {}
                Err(nix::errno::Errno::ECONNREFUSED | nix::errno::Errno::ENOENT) => {
                    return Err(Claim::Absent);
                }
                Err(_) => return Err(Claim::Declined),
            }
            let mut stream = UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))
                .map_err(|_| Claim::Declined)?;
            if !is_ours(&stream) {
                return Err(Claim::Declined);
            }
            let mut answer = [0u8; 1];
            match stream.read_exact(&mut answer).await {
                Ok(_) if answer[0] == b'k' => Ok(stream),
                _ => Err(Claim::Declined),
            }
        };
        match tokio::time::timeout(CLAIM_WAIT, asked).await {
            Ok(Ok(stream)) => Claim::Served(stream),
            Ok(Err(claim)) => claim,
            Err(_) => Claim::Declined,
        }
    }

    /// Starts a keeper in the background (detached: its own process group, no stdio).
    pub fn start(&self) -> std::io::Result<()> {
        let path = |p: &Option<PathBuf>| p.clone().unwrap_or_default();
        Command::new(std::env::current_exe()?)
            .arg0(PROCESS_NAME)
            .env(KEEPER, self.name())
            .env(ENDPOINTS, self.config.endpoints.join(","))
            .env(CA, path(&self.config.ca_cert_file))
            .env(CERT, path(&self.config.cert_file))
            .env(KEY, path(&self.config.key_file))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map(|_| ())
    }
}

/// Whether the peer of `stream` runs this executable as our user.
fn is_ours(stream: &UnixStream) -> bool {
    let exe = |path: String| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    let (Ok(cred), Ok(me)) = (stream.peer_cred(), std::fs::metadata("/proc/self")) else {
        return false;
    };
    let Some(pid) = cred.pid() else {
        return false;
    };
    cred.uid() == me.uid()
        && exe(format!("/proc/{pid}/exe"))
            .is_some_and(|theirs| Some(theirs) == exe("/proc/self/exe".into()))
}

fn hex_prefix(bytes: &[u8], n: usize) -> String {
    bytes.iter().take(n).map(|b| format!("{b:02x}")).collect()
}

/// Runs the keeper if this process was started as one; true if it was (then `main` exits).
pub fn run_if_requested() -> bool {
    let Ok(name) = std::env::var(KEEPER) else {
        return false;
    };
    let path = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let config = EtcdConfig {
        ca_cert_file: path(CA),
        cert_file: path(CERT),
        key_file: path(KEY),
        ..EtcdConfig::new(
            std::env::var(ENDPOINTS)
                .unwrap_or_default()
                .split(',')
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect(),
        )
    };
    // A keeper has nobody to report to: whatever goes wrong, calls connect directly.
    let _ = keep(name.as_bytes(), &config);
    true
}

/// Who may use the keeper: its own user, seeing the very key file it uses.
struct Access {
    uid: u32,
    key: Option<(PathBuf, (u64, u64))>,
}

impl Access {
    fn allows(&self, stream: &UnixStream) -> bool {
        let Ok(cred) = stream.peer_cred() else {
            return false;
        };
        if cred.uid() != self.uid {
            return false;
        }
        let Some((path, id)) = &self.key else {
            return true;
        };
        let Some(pid) = cred.pid() else {
            return false;
        };
        // The key as the caller sees it, resolved inside the caller's root: a symlink there
        // must not lead out to the file we see.
        let (base, rel) = match path.strip_prefix("/") {
            Ok(rel) => (format!("/proc/{pid}/root"), rel),
            Err(_) => (format!("/proc/{pid}/cwd"), path.as_path()),
        };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        std::fs::File::open(base)
            .ok()
            .and_then(|root| openat2(&root, rel, how).ok())
            .and_then(|fd| std::fs::File::from(fd).metadata().ok())
            .is_some_and(|m| (m.dev(), m.ino()) == *id)
    }
}

/// A connection with its handshake done, waiting in its own task to be claimed.
struct Warm {
    claim: oneshot::Sender<UnixStream>,
    born: Instant,
}

fn keep(name: &[u8], config: &EtcdConfig) -> Result<(), EtcdError> {
    let io = |e: std::io::Error| EtcdError::Config(e.to_string());
    let tls = crate::transport::tls_config(config)?;
    let targets = Arc::new(
        config
            .endpoints
            .iter()
            .map(|e| Target::parse(e))
            .collect::<Result<Vec<_>, _>>()?,
    );
    let key = match &config.key_file {
        Some(k) => {
            let m = std::fs::metadata(k).map_err(io)?;
            Some((k.clone(), (m.dev(), m.ino())))
        }
        None => None,
    };
    let access = Access {
        uid: std::fs::metadata("/proc/self").map_err(io)?.uid(),
        key,
    };
    // Binding the name is the election: a second keeper for the same name exits here.
    let listener = std::os::unix::net::UnixListener::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(io)?,
    )
    .map_err(io)?;
    listener.set_nonblocking(true).map_err(io)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io)?;
    runtime.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(listener).map_err(io)?;
        let dialer = Dialer::start(targets, tls, config.connect_timeout);
        serve(listener, access, dialer).await;
        Ok(())
    })
}

async fn serve(listener: tokio::net::UnixListener, access: Access, dialer: Dialer) {
    // Dropped at the end of life: the name is free for a new keeper while the sessions
    // under way finish.
    let mut listener = Some(listener);
    let started = Instant::now();
    let mut last_call = Instant::now();
    let mut pool: VecDeque<Warm> = VecDeque::new();
    let mut dialing = 0usize;
    let mut dial_failed = false;
    let (dialed_tx, mut dialed_rx) = mpsc::unbounded_channel::<Option<Stream>>();
    // The end of each forwarded session (then a connection is made to replace it), and how
    // many are under way (counted by the sessions themselves).
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<()>();
    let active = Arc::new(AtomicUsize::new(0));
    let dial_one = |dialing: &mut usize| {
        *dialing += 1;
        dialer.dial(dialed_tx.clone());
    };
    for _ in 0..POOL {
        dial_one(&mut dialing);
    }
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            accepted = async {
                match &listener {
                    Some(l) => l.accept().await,
                    None => std::future::pending().await,
                }
            } => {
                let Ok((client, _)) = accepted else { continue };
                if !access.allows(&client) {
                    continue;
                }
                last_call = Instant::now();
                dial_failed = false;
                let mut client = Some(client);
                while let Some(c) = client.take() {
                    let Some(warm) = pool.pop_front() else {
                        client = Some(c);
                        break;
                    };
                    if warm.born.elapsed() >= WARM_MAX {
                        client = Some(c);
                        continue;
                    }
                    // An error gives the caller back: that connection had died.
                    if let Err(c) = warm.claim.send(c) {
                        client = Some(c);
                    }
                }
                if let Some(c) = client {
                    let _ = c.try_write(b"n");
                    if pool.len() + dialing < POOL {
                        dial_one(&mut dialing);
                    }
                }
            }
            dialed = dialed_rx.recv() => {
                dialing = dialing.saturating_sub(1);
                match dialed.flatten().and_then(|mut d| d.rehome().ok().map(|()| d)) {
                    Some(stream) => {
                        let (claim, claimed) = oneshot::channel();
                        tokio::spawn(hold(stream, claimed, ended_tx.clone(), active.clone()));
                        pool.push_back(Warm { claim, born: Instant::now() });
                    }
                    None => dial_failed = true,
                }
            }
            Some(()) = ended_rx.recv() => {
                if pool.len() + dialing < POOL && !dial_failed && listener.is_some() {
                    dial_one(&mut dialing);
                }
            }
            _ = tick.tick() => {
                pool.retain(|w| !w.claim.is_closed() && w.born.elapsed() < WARM_MAX);
                let idle = last_call.elapsed() >= IDLE;
                let unreachable = dial_failed && pool.is_empty() && dialing == 0;
                if idle || unreachable || started.elapsed() >= MAX_LIFE {
                    listener = None;
                    pool.clear();
                    if active.load(Ordering::Relaxed) == 0 {
                        return;
                    }
                } else if !dial_failed {
                    while pool.len() + dialing < POOL {
                        dial_one(&mut dialing);
                    }
                }
            }
        }
    }
}

/// Makes connections on a thread of its own at the lowest CPU priority: a handshake is a
/// few hundred microseconds of crypto (and as much in etcd), which must go to idle CPU
/// time rather than delay the calls being served, or the node's other work.
struct Dialer {
    requests: std::sync::mpsc::Sender<mpsc::UnboundedSender<Option<Stream>>>,
}

impl Dialer {
    fn start(
        targets: Arc<Vec<Target>>,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Dialer {
        let (requests, incoming) =
            std::sync::mpsc::channel::<mpsc::UnboundedSender<Option<Stream>>>();
        std::thread::spawn(move || {
            lower_priority();
            // Its own runtime: the handshake's I/O and crypto stay on this thread; each
            // finished connection then moves to the serving runtime (`Stream::rehome`).
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            for reply in incoming {
                let _ = reply.send(runtime.block_on(dial(&targets, Some(&tls), timeout)).ok());
            }
        });
        Dialer { requests }
    }

    fn dial(&self, reply: mpsc::UnboundedSender<Option<Stream>>) {
        if let Err(std::sync::mpsc::SendError(reply)) = self.requests.send(reply) {
            let _ = reply.send(None);
        }
    }
}

/// Nice 19 for the calling thread (Linux keeps the nice value per thread, and `PRIO_PROCESS`
/// with no pid names the calling thread). Failure only leaves the dialer at normal priority.
fn lower_priority() {
    let _ = rustix::process::setpriority_process(None, 19);
}

/// Holds one warm connection until a caller claims it (keeping whatever etcd sends first),
/// then forwards bytes both ways until either side closes.
async fn hold(
    mut etcd: Stream,
    mut claimed: oneshot::Receiver<UnixStream>,
    ended: mpsc::UnboundedSender<()>,
    active: Arc<AtomicUsize>,
) {
    let mut early = vec![b'k'];
    let mut buf = [0u8; 4096];
    let mut client = loop {
        tokio::select! {
            // What etcd sent, or its close, before a claim that arrives at the same time:
            // a dead connection must not be handed out.
            biased;
            n = etcd.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => early.extend_from_slice(&buf[..n]),
            },
            c = &mut claimed => match c {
                Ok(c) => break c,
                // Expired, or the keeper is leaving.
                Err(_) => return,
            },
        }
    };
    // Counted from here to the end, however it ends.
    let _session = Session::start(active, ended);
    if client.write_all(&early).await.is_ok() {
        let _ = tokio::time::timeout(
            SESSION_MAX,
            tokio::io::copy_bidirectional(&mut client, &mut etcd),
        )
        .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), etcd.shutdown()).await;
}

/// A forwarded session under way: counted while it lives, and reported when it ends.
struct Session {
    active: Arc<AtomicUsize>,
    ended: mpsc::UnboundedSender<()>,
}

impl Session {
    fn start(active: Arc<AtomicUsize>, ended: mpsc::UnboundedSender<()>) -> Session {
        active.fetch_add(1, Ordering::Relaxed);
        Session { active, ended }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        let _ = self.ended.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_settings_and_the_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "one").expect("write");
        let config = EtcdConfig {
            key_file: Some(key.clone()),
            ..EtcdConfig::new(vec!["https://127.0.0.1:2379".into()])
        };
        let a = Keeper::for_config(&config).expect("TLS gets a keeper");
        assert_eq!(
            a.name(),
            Keeper::for_config(&config).expect("again").name(),
            "stable"
        );
        assert!(a.name().starts_with("calico-etcd-keeper-"));
        let other = EtcdConfig {
            endpoints: vec!["https://127.0.0.1:2380".into()],
            ..config.clone()
        };
        assert_ne!(a.name(), Keeper::for_config(&other).expect("TLS").name());
        // A rotated key file is a new keeper.
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(&key, "two!").expect("write");
        assert_ne!(a.name(), Keeper::for_config(&config).expect("TLS").name());
        // Plain etcd gets none.
        assert!(
            Keeper::for_config(&EtcdConfig::new(vec!["http://127.0.0.1:2379".into()])).is_none()
        );
    }
}
