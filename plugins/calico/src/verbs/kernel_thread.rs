//! The kernel half of an ADD, on its own thread (see [`KernelThread`]).

use super::dataplane_error;
use calico_dataplane::{Dataplane, DataplaneError, Links, WorkloadSpec};
use cni_protocol::{CniError, ErrorCode};
use ipnet::IpNet;

/// The kernel half of an ADD, on its own thread: it makes the veth pair and says so, finishes
/// the interfaces (settings, links up, the pod's routes), then puts on each set of addresses
/// the datastore half sends (the last one wins: an earlier one is taken off again).
pub(super) struct KernelThread<'scope> {
    handle: Option<std::thread::ScopedJoinHandle<'scope, KernelDone>>,
    paired: std::sync::mpsc::Receiver<()>,
    is_paired: bool,
    addresses: Option<std::sync::mpsc::Sender<Vec<IpNet>>>,
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

impl<'scope> KernelThread<'scope> {
    pub(super) fn start<'env>(
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
            let mut on: Vec<IpNet> = Vec::new();
            let mut failed = None;
            // Until the datastore half is done.
            for next in wanted {
                if failed.is_some() || next == on {
                    continue;
                }
                let swapped = if on.is_empty() {
                    Ok(())
                } else {
                    dataplane.unconfigure(spec, &l, &on)
                };
                match swapped.and_then(|()| dataplane.configure(spec, &l, &next)) {
                    Ok(()) => on = next,
                    Err(e) => failed = Some(e),
                }
            }
            KernelDone {
                links: Ok(l),
                configured: failed.map_or(Ok(on), |e| Err(dataplane_error(e))),
            }
        });
        KernelThread {
            handle: Some(handle),
            paired,
            is_paired: false,
            addresses: Some(addresses),
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

    /// Has these addresses put on the pod (and its host routes).
    pub(super) fn configure(&self, addresses: &[IpNet]) {
        if let Some(tx) = &self.addresses {
            let _ = tx.send(addresses.to_vec());
        }
    }

    /// Lets the thread finish and returns what it did.
    pub(super) fn finish(&mut self) -> &KernelDone {
        self.addresses = None;
        self.done.get_or_insert_with(|| {
            self.handle
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or(KernelDone {
                    links: Err((
                        CniError::new(ErrorCode::DATAPLANE, "the kernel thread panicked"),
                        false,
                    )),
                    configured: Ok(Vec::new()),
                })
        })
    }
}
