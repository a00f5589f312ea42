//! Deferred kernel work: what the plugins hand over so they need not wait for the kernel.
//!
//! One worker thread does it in the order accepted (the kernel serialises it anyway: a veth
//! deletion waits out an RCU grace period holding the RTNL lock):
//!
//! - a veth deletion by index in the namespace passed ([`LinkRemoval`]);
//! - a UDP conntrack flush, in the network namespace the plugin passed, and the plugin's
//!   nfnetlink socket, which is kept and closed with the others once the node has been
//!   quiet for [`QUIET`] (closing one makes the kernel wait out a grace period under the
//!   nf_tables commit lock; see `calico_netfilter::release`).
//!
//! Work accepted is done whatever becomes of the caller. At SIGTERM, once the last
//! [`Queue`] is dropped, the thread does everything still queued, closes the sockets and
//! ends; [`Worker::finish`] waits for that.

use super::metrics::{Kind, KindOutcome, Metrics};
use calico_dataplane::link_removal::{LinkRemoval, Removed};
use calico_netfilter::NfSocket;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Quiet time after which held nfnetlink sockets are closed (as the plugins' holder did:
/// long enough that a burst of calls does not meet the closes, short enough that few pile
/// up).
pub const QUIET: Duration = Duration::from_secs(2);
/// Held sockets beyond which they are closed at once, quiet or not (descriptors are finite).
const MAX_HELD: usize = 256;

/// One piece of work.
pub enum Work {
    Link(LinkRemoval),
    Netfilter {
        socket: OwnedFd,
        netns: File,
        udp: Vec<(u8, Vec<u16>)>,
    },
}

impl Work {
    fn kind(&self) -> &'static str {
        match self {
            Work::Link(_) => "link",
            Work::Netfilter { .. } => "netfilter",
        }
    }
}

/// Where work is handed in; cheap to clone. The worker stops once every queue is gone.
#[derive(Clone)]
pub struct Queue {
    sender: mpsc::Sender<Work>,
    metrics: Metrics,
}

impl Queue {
    /// Takes `work`; false if the worker has stopped (then nothing was taken).
    pub fn accept(&self, work: Work) -> bool {
        self.metrics.deferred_pending.inc();
        if self.sender.send(work).is_err() {
            self.metrics.deferred_pending.dec();
            return false;
        }
        true
    }
}

/// The thread doing the work.
pub struct Worker {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    pub fn start(metrics: Metrics) -> std::io::Result<(Queue, Worker)> {
        let (sender, work) = mpsc::channel();
        let m = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("deferred-kernel-work".into())
            .spawn(move || run(&work, &m))?;
        Ok((
            Queue { sender, metrics },
            Worker {
                thread: Some(thread),
            },
        ))
    }

    /// Once every [`Queue`] is dropped: does everything accepted, closes what is held, and
    /// returns.
    pub fn finish(&mut self) {
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::error!("the deferred kernel work thread panicked");
        }
    }
}

fn run(work: &mpsc::Receiver<Work>, metrics: &Metrics) {
    let mut held: Vec<OwnedFd> = Vec::new();
    let mut last = Instant::now();
    loop {
        let next = if held.is_empty() {
            work.recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        } else {
            work.recv_timeout(QUIET.saturating_sub(last.elapsed()))
        };
        match next {
            Ok(w) => {
                last = Instant::now();
                let kind = w.kind();
                let started = Instant::now();
                let outcome = match w {
                    Work::Link(removal) => delete_link(&removal),
                    Work::Netfilter { socket, netns, udp } => {
                        held.push(socket);
                        metrics.sockets_held.set(held.len() as i64);
                        flush(&netns, &udp)
                    }
                };
                metrics.deferred_pending.dec();
                record(metrics, kind, outcome, started);
                if held.len() >= MAX_HELD {
                    close(&mut held, metrics);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if last.elapsed() >= QUIET {
                    close(&mut held, metrics);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    close(&mut held, metrics);
}

fn record(metrics: &Metrics, kind: &'static str, outcome: &'static str, started: Instant) {
    metrics
        .deferred
        .get_or_create(&KindOutcome { kind, outcome })
        .inc();
    metrics
        .deferred_seconds
        .get_or_create(&Kind { kind })
        .observe(started.elapsed().as_secs_f64());
}

fn delete_link(removal: &LinkRemoval) -> &'static str {
    let what = format!(
        "{} (index {}) in {}",
        removal.ifname,
        removal.index,
        removal.netns_path.display()
    );
    match removal.run() {
        Ok(Removed::Deleted) => {
            log::info!("deleted {what}");
            "deleted"
        }
        Ok(Removed::InterfaceGone) => {
            log::info!("{what}: already gone");
            "gone"
        }
        Err(e) => {
            log::error!("deleting {what}: {e}");
            "error"
        }
    }
}

/// The UDP flush, in the plugin's namespace (a socket of ours opened there).
fn flush(netns: &File, udp: &[(u8, Vec<u16>)]) -> &'static str {
    if udp.iter().all(|(_, ports)| ports.is_empty()) {
        return "nothing";
    }
    let done = calico_dataplane::netns::within(netns, Path::new("the caller's namespace"), || {
        NfSocket::open().map(|mut sock| calico_netfilter::release::flush(&mut sock, udp))
    });
    match done {
        Ok(Ok(())) => {
            log::debug!("flushed UDP conntrack entries of {udp:?}");
            "flushed"
        }
        Ok(Err(e)) => {
            log::warn!("UDP conntrack flush of {udp:?}: {e}");
            "error"
        }
        Err(e) => {
            log::warn!("UDP conntrack flush of {udp:?}: {e}");
            "error"
        }
    }
}

fn close(held: &mut Vec<OwnedFd>, metrics: &Metrics) {
    if held.is_empty() {
        return;
    }
    let started = Instant::now();
    let n = held.len();
    held.clear();
    metrics.sockets_held.set(0);
    log::debug!("closed {n} nfnetlink sockets in {:?}", started.elapsed());
    record(metrics, "close", "closed", started);
}
