//! The kernel half of an ADD, on its own thread (see [`KernelThread`]).

use super::dataplane_error;
use calico_dataplane::{Dataplane, DataplaneError, Links, WorkloadSpec};
use cni_protocol::{CniError, ErrorCode};
use ipnet::IpNet;

/// The kernel half of an ADD, on its own thread: it makes the veth pair and says so, finishes
/// the interfaces (settings, links up, the pod's routes), puts on the first set of addresses
/// the datastore half sends, and ends. A later set (a conflict made the allocation choose
/// others; the last one wins) is swapped in by [`KernelThread::finish`] on the caller's
/// thread: the thread has ended long before the transaction is answered, so joining it
/// costs nothing, where waking it to end after the answer (and the caller waiting for its
/// end) cost ~0.1 ms of every ADD.
pub(super) struct KernelThread<'scope, 'env> {
    handle: Option<std::thread::ScopedJoinHandle<'scope, KernelDone>>,
    paired: std::sync::mpsc::Receiver<()>,
    is_paired: bool,
    addresses: Option<std::sync::mpsc::Sender<Vec<IpNet>>>,
    /// The last set of addresses asked for.
    wanted: Option<Vec<IpNet>>,
    dataplane: &'env (dyn Dataplane + Sync),
    spec: &'env WorkloadSpec,
    done: Option<KernelDone>,
}

/// What the kernel thread made: the links (or why not, and whether the names were someone
/// else's), and the addresses it put on them.
pub(super) struct KernelDone {
    pub links: Result<Links, (CniError, bool)>,
    pub configured: Result<Vec<IpNet>, CniError>,
}

impl KernelDone {
    /// Why the links could not be made, if they could not.
    fn links_failure(&self) -> Result<(), CniError> {
        match &self.links {
            Err((e, _)) => Err(e.clone()),
            Ok(_) => Ok(()),
        }
    }
}

impl<'scope, 'env> KernelThread<'scope, 'env> {
    pub(super) fn start(
        s: &'scope std::thread::Scope<'scope, 'env>,
        dataplane: &'env (dyn Dataplane + Sync),
        spec: &'env WorkloadSpec,
        started: std::time::Instant,
    ) -> Self {
        let (paired_tx, paired) = std::sync::mpsc::channel();
        let (addresses, wanted) = std::sync::mpsc::channel::<Vec<IpNet>>();
        let handle = s.spawn(move || {
            let links = dataplane.create_then(spec, &mut || {
                let _ = paired_tx.send(());
            });
            // Whatever `create_then` did, nobody may wait for the signal any longer.
            drop(paired_tx);
            log::debug!("veth ready after {:?}", started.elapsed());
            let l = match links {
                Ok(l) => l,
                Err(e) => {
                    let theirs = matches!(e, DataplaneError::Exists { .. });
                    return KernelDone {
                        links: Err((dataplane_error(e), theirs)),
                        configured: Ok(Vec::new()),
                    };
                }
            };
            // The first set (none if the datastore half ends without one).
            let configured = match wanted.recv() {
                Ok(first) if !first.is_empty() => dataplane
                    .configure(spec, &l, &first)
                    .map(|()| first)
                    .map_err(dataplane_error),
                _ => Ok(Vec::new()),
            };
            KernelDone {
                links: Ok(l),
                configured,
            }
        });
        KernelThread {
            handle: Some(handle),
            paired,
            is_paired: false,
            addresses: Some(addresses),
            wanted: None,
            dataplane,
            spec,
            done: None,
        }
    }

    /// Waits until the veth pair exists; the error if it never will.
    pub(super) fn wait_paired(&mut self) -> Result<(), CniError> {
        if !self.is_paired && self.done.is_none() && self.paired.recv().is_ok() {
            self.is_paired = true;
        }
        if self.is_paired {
            return Ok(());
        }
        self.finish().links_failure()
    }

    /// The error if the veth pair has already failed; Ok while it exists or is still being
    /// made (no wait).
    pub(super) fn failed_already(&mut self) -> Result<(), CniError> {
        if self.is_paired || self.done.is_some() {
            return self.done.as_ref().map_or(Ok(()), KernelDone::links_failure);
        }
        match self.paired.try_recv() {
            Ok(()) => {
                self.is_paired = true;
                Ok(())
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => Ok(()),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => self.finish().links_failure(),
        }
    }

    /// Has these addresses put on the pod (and its host routes), in place of any set asked
    /// for before.
    pub(super) fn configure(&mut self, addresses: &[IpNet]) {
        if let Some(tx) = &self.addresses {
            // Taken by the thread if it has not ended (it takes the first set only).
            let _ = tx.send(addresses.to_vec());
        }
        self.wanted = Some(addresses.to_vec());
    }

    /// Lets the thread finish, puts on the last set of addresses asked for if the thread
    /// put on another, and returns what was done.
    pub(super) fn finish(&mut self) -> &KernelDone {
        self.addresses = None;
        let done = match self.done.take() {
            Some(done) => done,
            None => self.join_and_swap(),
        };
        self.done.insert(done)
    }

    fn join_and_swap(&mut self) -> KernelDone {
        let mut done = self
            .handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or(KernelDone {
                links: Err((
                    CniError::new(ErrorCode::DATAPLANE, "the kernel thread panicked"),
                    false,
                )),
                configured: Ok(Vec::new()),
            });
        if let (Ok(l), Ok(on), Some(want)) = (&done.links, &done.configured, &self.wanted)
            && on != want
        {
            let taken_off = if on.is_empty() {
                Ok(())
            } else {
                self.dataplane.unconfigure(self.spec, l, on)
            };
            done.configured = taken_off
                .and_then(|()| self.dataplane.configure(self.spec, l, want))
                .map(|()| want.clone())
                .map_err(dataplane_error);
        }
        done
    }
}
