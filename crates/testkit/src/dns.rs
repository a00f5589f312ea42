//! A stand-in for a DNS server: a UDP responder with a fixed set of records, for tests of
//! `etcd_discovery_srv` (SRV records naming etcd, A records for their targets). There is no
//! DNS server for test names on these machines, and a real one would need configuring per
//! test; this answers exactly what it was given.
//!
//! It answers each question with the records of that name and type (names compare without
//! case), NOERROR with no answer when the name has only records of other types, and NXDOMAIN
//! for unknown names. It listens on port 53 (resolv.conf cannot name another port), inside a
//! network namespace if one is given, on its own thread, and stops on drop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record};
use nix::sched::{CloneFlags, setns};

use crate::NetNs;

/// The responder; see the module docs. Stopped on drop.
pub struct DnsStandIn {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    records: Vec<Record>,
    /// Every question, as `"SRV _etcd-client-ssl._tcp.example.test."`.
    questions: Vec<String>,
}

impl DnsStandIn {
    /// Listens on UDP `ip:53`, inside `netns` if given; starts with no records.
    pub fn start(netns: Option<&NetNs>, ip: IpAddr) -> Result<Self> {
        let netns_fd = netns.map(NetNs::fd).transpose()?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<SocketAddr>>();
        let served = Arc::clone(&state);
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("dns-stand-in".into())
            .spawn(move || {
                let bound = (|| -> Result<UdpSocket> {
                    if let Some(fd) = netns_fd {
                        setns(&fd, CloneFlags::CLONE_NEWNET).context("setns into the netns")?;
                    }
                    let socket =
                        UdpSocket::bind((ip, 53)).with_context(|| format!("binding {ip}:53"))?;
                    // Short, so a stop is noticed soon.
                    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
                    Ok(socket)
                })();
                match bound.and_then(|s| Ok((s.local_addr()?, s))) {
                    Ok((addr, socket)) => {
                        let _ = ready_tx.send(Ok(addr));
                        serve(&socket, &served, &stopping);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .context("spawning the DNS stand-in's thread")?;
        let addr = ready_rx
            .recv()
            .map_err(|_| anyhow!("the DNS stand-in's thread ended before listening"))??;
        Ok(Self {
            addr,
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// Adds an SRV record `name` → `target:port`.
    pub fn add_srv(
        &self,
        name: &str,
        priority: u16,
        weight: u16,
        port: u16,
        target: &str,
    ) -> Result<()> {
        let rdata = RData::SRV(SRV::new(priority, weight, port, fqdn(target)?));
        self.state()
            .records
            .push(Record::from_rdata(fqdn(name)?, 60, rdata));
        Ok(())
    }

    /// Adds an A record `name` → `ip`.
    pub fn add_a(&self, name: &str, ip: Ipv4Addr) -> Result<()> {
        let rdata = RData::A(A(ip));
        self.state()
            .records
            .push(Record::from_rdata(fqdn(name)?, 60, rdata));
        Ok(())
    }

    /// Every question asked so far, as `"SRV _etcd-client._tcp.example.test."`.
    pub fn questions(&self) -> Vec<String> {
        self.state().questions.clone()
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl Drop for DnsStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!("testkit: the DNS stand-in's thread panicked");
        }
    }
}

fn fqdn(name: &str) -> Result<Name> {
    let mut n = Name::from_ascii(name).with_context(|| format!("{name:?} is not a DNS name"))?;
    n.set_fqdn(true);
    Ok(n)
}

/// A panic while holding the lock leaves consistent data here, so a poisoned lock is used.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn serve(socket: &UdpSocket, state: &Mutex<State>, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => {
                eprintln!("testkit: DNS stand-in: receive: {e}");
                continue;
            }
        };
        // Not a DNS message: nothing to answer.
        let Ok(query) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        let reply = answer(&mut lock(state), &query);
        if let Ok(bytes) = reply.to_vec()
            && let Err(e) = socket.send_to(&bytes, peer)
        {
            eprintln!("testkit: DNS stand-in: send: {e}");
        }
    }
}

fn answer(state: &mut State, query: &Message) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    let mut known_name = true;
    for q in &query.queries {
        state
            .questions
            .push(format!("{} {}", q.query_type(), q.name()));
        let same_name = |r: &&Record| &r.name == q.name();
        let matching: Vec<Record> = state
            .records
            .iter()
            .filter(same_name)
            .filter(|r| r.record_type() == q.query_type())
            .cloned()
            .collect();
        if matching.is_empty() && !state.records.iter().any(|r| same_name(&r)) {
            known_name = false;
        }
        reply.add_query(q.clone());
        reply.add_answers(matching);
    }
    if !known_name {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_by_name_and_type() {
        let mut state = State::default();
        state.records.push(Record::from_rdata(
            fqdn("_etcd-client._tcp.Example.test").unwrap(),
            60,
            RData::SRV(SRV::new(0, 0, 2379, fqdn("etcd.example.test").unwrap())),
        ));
        let ask = |state: &mut State, name: &str, ty| {
            let mut m = Message::query();
            m.add_query(hickory_proto::op::Query::query(fqdn(name).unwrap(), ty));
            answer(state, &m)
        };
        use hickory_proto::rr::RecordType;
        let r = ask(
            &mut state,
            "_etcd-client._tcp.example.test",
            RecordType::SRV,
        );
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1);
        let r = ask(&mut state, "_etcd-client._tcp.example.test", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        let r = ask(&mut state, "nothing.example.test", RecordType::SRV);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(state.questions.len(), 3);
    }
}
