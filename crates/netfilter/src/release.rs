//! What a call leaves behind that nobody needs to wait for: its nfnetlink socket's close and
//! the UDP conntrack flush of mapped ports. Both go to the node agent (`calico-node run`,
//! over `calico-agent-protocol`) when there is one; without one the plugin does them itself
//! before it answers.
//!
//! 1. Closing an nfnetlink socket: on the last close of a socket that has used nf_tables,
//!    the kernel (`nft_rcv_nl_event` on `NETLINK_URELEASE`) waits for the objects of recent
//!    transactions to be freed, an RCU grace period (5-20 ms here), and it waits holding
//!    the namespace's nf_tables commit lock. A plugin closing its socket pays that wait in
//!    its `exit`; so the socket goes to the agent, which keeps it while calls keep coming and
//!    closes the ones it holds together when the node has been quiet for a while.
//! 2. Deleting UDP conntrack entries of mapped ports: finding them walks the host's whole
//!    conntrack table (262144 buckets, ~3.6 ms here) whenever the namespace tracks anything.
//!    The agent does it in the plugin's network namespace, whose descriptor goes along.

use crate::conntrack;
use crate::socket::NfSocket;
use calico_agent_protocol::client::{ACCEPT_WAIT, work_alone};
use calico_agent_protocol::message::UdpFlush;
use calico_agent_protocol::{Connection, Reply, Request};
use std::os::fd::AsFd;

/// Deletes the UDP conntrack entries to `udp`'s ports (per family) in the socket's
/// namespace; failures are logged only (as the reference plugin does: the rules are what
/// matters).
pub fn flush(sock: &mut NfSocket, udp: &[(u8, Vec<u16>)]) {
    for (family, ports) in udp {
        if let Err(e) = conntrack::delete_flows(sock, *family, conntrack::IPPROTO_UDP, ports) {
            log::warn!("could not delete UDP conntrack entries for {ports:?}: {e}");
        }
    }
}

/// The agent's request for `udp` (sent with the socket and the caller's namespace).
pub fn request(udp: &[(u8, Vec<u16>)]) -> Request {
    Request::ReleaseNetfilter {
        udp: udp
            .iter()
            .filter(|(_, ports)| !ports.is_empty())
            .map(|(family, ports)| UdpFlush {
                family: *family,
                ports: ports.clone(),
            })
            .collect(),
    }
}

/// Who finished the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleasedBy {
    Agent,
    Us,
}

/// Leaves the socket's close and the UDP flush of `udp`'s ports (per family) to the agent;
/// without one, does both here.
pub fn release(mut sock: NfSocket, udp: &[(u8, Vec<u16>)]) -> ReleasedBy {
    if let Some(mut agent) = Connection::to_agent() {
        match std::fs::File::open("/proc/thread-self/ns/net") {
            Ok(netns) => {
                match agent.call(&request(udp), &[sock.as_fd(), netns.as_fd()], ACCEPT_WAIT) {
                    Ok(Reply::Accepted) => return ReleasedBy::Agent,
                    Ok(Reply::ShuttingDown) => log::debug!("calico-node is stopping"),
                    Ok(other) => log::warn!("calico-node did not take the socket: {other:?}"),
                    Err(e) => work_alone(&e.to_string()),
                }
            }
            Err(e) => log::warn!("cannot open our network namespace: {e}"),
        }
    }
    flush(&mut sock, udp);
    ReleasedBy::Us
}
