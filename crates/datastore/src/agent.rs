//! etcd through the node agent (`calico-node run`): a plugin whose etcd settings are the
//! agent's sends its reads and guarded transactions over the agent's socket, to be run on
//! the agent's connection, so the call makes no TCP connection and no TLS handshake of its
//! own (a mutual-TLS handshake is ~1.3 ms here, a third of an ADD).
//!
//! - [`PluginStore`]: the plugin's [`KvStore`]: through the agent when it serves the same
//!   etcd, else (no agent, other settings, the agent stopping or gone) a connection of its
//!   own, made only then. Each request stays the plugin's own: one store call is one etcd
//!   transaction, as with a direct connection.
//! - [`serve`]: the agent's side of one request, on its [`EtcdClient`].
//! - [`identity`]: what must be equal for the agent to serve a plugin: the endpoints and the
//!   contents (not the paths) of the CA, certificate and key files.
//!
//! A read whose reply is lost (the agent killed under it) is sent again over the plugin's
//! own connection; a transaction is not: its outcome is unknown, so it fails as etcd being
//! unreachable would, and the caller's rollback (over its own connection) takes over.

use crate::config::EtcdConfig;
use crate::error::{EtcdError, StoreError};
use crate::etcd::{Etcd, EtcdClient};
use crate::store::{Guard, Kv, KvStore, Read, TxnOutcome, Write};
use calico_agent_protocol::message::{
    EtcdCall, EtcdIdentity, KeyGuard, KeyRead, KeyValue, KeyWrite, TxnResult,
};
use calico_agent_protocol::{CallError, Connection, Reply, Request};
use sha2::{Digest, Sha256};
use std::cell::{OnceCell, RefCell};
use std::time::Duration;

/// What the agent must share with a plugin's settings to serve it. Reads the TLS files
/// (bounded and without blocking: they are read on every call through the agent).
pub fn identity(config: &EtcdConfig) -> Result<EtcdIdentity, calico_fsbound::FileError> {
    let [ca, cert, key] = crate::transport::tls_settings(config).map(|(setting, file)| {
        file.map(|p| {
            calico_fsbound::read_config_file(p, calico_fsbound::SMALL_FILE_LIMIT, setting)
                .map(|bytes| <[u8; 32]>::from(Sha256::digest(&bytes)))
        })
        .transpose()
    });
    Ok(EtcdIdentity {
        endpoints: config.endpoints.clone(),
        discovery_srv: config.discovery_srv.clone(),
        ca: ca?,
        cert: cert?,
        key: key?,
    })
}

fn read_to_wire(r: &Read) -> KeyRead {
    match r {
        Read::Key(k) => KeyRead::Key(k.clone()),
        Read::Prefix(p) => KeyRead::Prefix(p.clone()),
        Read::PrefixKeys(p) => KeyRead::PrefixKeys(p.clone()),
    }
}

fn read_from_wire(r: KeyRead) -> Read {
    match r {
        KeyRead::Key(k) => Read::Key(k),
        KeyRead::Prefix(p) => Read::Prefix(p),
        KeyRead::PrefixKeys(p) => Read::PrefixKeys(p),
    }
}

fn guard_to_wire(g: &Guard) -> KeyGuard {
    match g {
        Guard::Absent(k) => KeyGuard::Absent(k.clone()),
        Guard::Revision(k, r) => KeyGuard::Revision(k.clone(), *r),
    }
}

fn guard_from_wire(g: KeyGuard) -> Guard {
    match g {
        KeyGuard::Absent(k) => Guard::Absent(k),
        KeyGuard::Revision(k, r) => Guard::Revision(k, r),
    }
}

fn write_to_wire(w: &Write) -> KeyWrite {
    match w {
        Write::Put(k, v) => KeyWrite::Put(k.clone(), v.clone()),
        Write::Delete(k) => KeyWrite::Delete(k.clone()),
    }
}

fn write_from_wire(w: KeyWrite) -> Write {
    match w {
        KeyWrite::Put(k, v) => Write::Put(k, v),
        KeyWrite::Delete(k) => Write::Delete(k),
    }
}

fn kv_to_wire(kv: Kv) -> KeyValue {
    KeyValue {
        key: kv.key,
        value: kv.value,
        mod_revision: kv.mod_revision,
    }
}

fn kv_from_wire(kv: KeyValue) -> Kv {
    Kv {
        key: kv.key,
        value: kv.value,
        mod_revision: kv.mod_revision,
    }
}

fn failed(e: EtcdError) -> Reply {
    Reply::EtcdFailed {
        unreachable: e.is_unreachable(),
        message: e.to_string(),
    }
}

/// The agent's side: runs `call` on `client` if `theirs` is the agent's identity (`ours`),
/// as one etcd request.
pub async fn serve(
    client: &EtcdClient,
    ours: &EtcdIdentity,
    theirs: &EtcdIdentity,
    call: EtcdCall,
) -> Reply {
    if ours != theirs {
        return Reply::OtherEtcd;
    }
    match call {
        EtcdCall::Read(reads) => {
            let reads: Vec<Read> = reads.into_iter().map(read_from_wire).collect();
            match client.read(&reads).await {
                Ok(found) => Reply::Read(
                    found
                        .into_iter()
                        .map(|kvs| kvs.into_iter().map(kv_to_wire).collect())
                        .collect(),
                ),
                Err(e) => failed(e),
            }
        }
        EtcdCall::Txn { guards, writes } => {
            let guards: Vec<Guard> = guards.into_iter().map(guard_from_wire).collect();
            let writes: Vec<Write> = writes.into_iter().map(write_from_wire).collect();
            match client.txn(&guards, &writes).await {
                Ok(TxnOutcome::Applied(rev)) => Reply::Txn(TxnResult::Applied(rev)),
                Ok(TxnOutcome::Conflict(current)) => Reply::Txn(TxnResult::Conflict(
                    current.into_iter().map(|kv| kv.map(kv_to_wire)).collect(),
                )),
                Err(e) => failed(e),
            }
        }
    }
}

/// The agent's connection and the identity its requests carry.
struct ViaAgent {
    connection: Connection,
    identity: EtcdIdentity,
}

/// A plugin call's store: the agent's etcd connection when it serves ours, else our own.
pub struct PluginStore {
    config: EtcdConfig,
    /// Until the agent cannot serve us (then `None` for the rest of the call).
    agent: RefCell<Option<ViaAgent>>,
    own: OnceCell<Etcd>,
}

impl PluginStore {
    /// The store for `config`: the agent if one answers (then nothing else is prepared),
    /// else a connection of our own (prepared now, so bad settings are reported here).
    pub fn connect(config: &EtcdConfig) -> Result<PluginStore, EtcdError> {
        let agent = if config.discovery_srv.is_none() {
            Connection::to_agent().and_then(|connection| match identity(config) {
                Ok(identity) => Some(ViaAgent {
                    connection,
                    identity,
                }),
                // Our own connection will report the unreadable file.
                Err(e) => {
                    log::debug!("etcd settings unreadable ({e}): not using calico-node");
                    None
                }
            })
        } else {
            None
        };
        let store = PluginStore {
            config: config.clone(),
            agent: RefCell::new(agent),
            own: OnceCell::new(),
        };
        if store.agent.borrow().is_none() {
            store.own()?;
        }
        Ok(store)
    }

    /// Our own connection, made on first need.
    fn own(&self) -> Result<&Etcd, EtcdError> {
        if let Some(e) = self.own.get() {
            return Ok(e);
        }
        let e = Etcd::connect(&self.config)?;
        Ok(self.own.get_or_init(|| e))
    }

    fn endpoints(&self) -> String {
        self.config.endpoints.join(",")
    }

    /// Sends `call` to the agent. `Ok(None)`: the agent did not serve it (nothing was done,
    /// or, for a read, it may be sent again): use our own connection. An error: the
    /// agent's etcd failed it, or a transaction's outcome is unknown.
    fn via_agent(&self, call: EtcdCall) -> Result<Option<Reply>, StoreError> {
        let mut slot = self.agent.borrow_mut();
        let Some(agent) = slot.as_mut() else {
            return Ok(None);
        };
        let is_txn = matches!(call, EtcdCall::Txn { .. });
        let request = Request::Etcd {
            identity: agent.identity.clone(),
            call,
        };
        // The agent bounds the request by its own request timeout; a second more for it to
        // answer.
        let wait = self.config.request_timeout + Duration::from_secs(1);
        let reply = match agent.connection.call(&request, &[], wait) {
            Ok(reply) => reply,
            Err(CallError::NotSent(e)) => {
                *slot = None;
                calico_agent_protocol::client::work_alone(&format!("gone: {e}"));
                return Ok(None);
            }
            Err(CallError::NoReply(e)) => {
                *slot = None;
                calico_agent_protocol::client::work_alone(&format!("lost: {e}"));
                if !is_txn {
                    return Ok(None);
                }
                return Err(StoreError::Unreachable {
                    store: format!("etcd at {}", self.endpoints()),
                    reason: format!(
                        "calico-node did not answer a transaction ({e}); whether it was \
                         applied is unknown"
                    ),
                });
            }
        };
        match reply {
            Reply::OtherEtcd => {
                log::debug!("calico-node serves other etcd settings: dialling etcd directly");
                *slot = None;
                Ok(None)
            }
            Reply::ShuttingDown => {
                log::debug!("calico-node is stopping: dialling etcd directly");
                *slot = None;
                Ok(None)
            }
            Reply::EtcdFailed {
                unreachable: true,
                message,
            } => Err(StoreError::Unreachable {
                store: format!("etcd at {}", self.endpoints()),
                reason: message,
            }),
            Reply::EtcdFailed { message, .. } => Err(StoreError::failed(message)),
            other @ (Reply::Read(_) | Reply::Txn(_)) => Ok(Some(other)),
            other => {
                log::debug!("calico-node answered {other:?} to an etcd request");
                *slot = None;
                if is_txn {
                    return Err(StoreError::failed(format!(
                        "calico-node answered a transaction with {other:?}"
                    )));
                }
                Ok(None)
            }
        }
    }
}

impl KvStore for PluginStore {
    fn read(&self, reads: &[Read]) -> Result<Vec<Vec<Kv>>, StoreError> {
        let call = EtcdCall::Read(reads.iter().map(read_to_wire).collect());
        if let Some(Reply::Read(found)) = self.via_agent(call)? {
            return Ok(found
                .into_iter()
                .map(|kvs| kvs.into_iter().map(kv_from_wire).collect())
                .collect());
        }
        Ok(self.own()?.read(reads)?)
    }

    fn txn(&self, guards: &[Guard], writes: &[Write]) -> Result<TxnOutcome, StoreError> {
        let call = EtcdCall::Txn {
            guards: guards.iter().map(guard_to_wire).collect(),
            writes: writes.iter().map(write_to_wire).collect(),
        };
        if let Some(Reply::Txn(outcome)) = self.via_agent(call)? {
            return Ok(match outcome {
                TxnResult::Applied(rev) => TxnOutcome::Applied(rev),
                TxnResult::Conflict(current) => TxnOutcome::Conflict(
                    current.into_iter().map(|kv| kv.map(kv_from_wire)).collect(),
                ),
            });
        }
        Ok(self.own()?.txn(guards, writes)?)
    }

    fn describe(&self) -> String {
        format!("etcd at {}", self.endpoints())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_compare_contents_not_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a.pem"), dir.path().join("b.pem"));
        std::fs::write(&a, "key").expect("write");
        std::fs::write(&b, "key").expect("write");
        let with_key = |k: &std::path::Path| EtcdConfig {
            key_file: Some(k.to_path_buf()),
            ..EtcdConfig::new(vec!["https://127.0.0.1:2379".into()])
        };
        let ia = identity(&with_key(&a)).expect("readable");
        assert_eq!(ia, identity(&with_key(&b)).expect("readable"));
        std::fs::write(&b, "another key").expect("write");
        assert_ne!(ia, identity(&with_key(&b)).expect("readable"));
        let other_endpoint = EtcdConfig {
            endpoints: vec!["https://127.0.0.1:2380".into()],
            ..with_key(&a)
        };
        assert_ne!(ia, identity(&other_endpoint).expect("readable"));
        assert!(identity(&with_key(&dir.path().join("missing"))).is_err());
    }

    #[test]
    fn the_wire_forms_round_trip() {
        let reads = [
            Read::Key("/a".into()),
            Read::Prefix("/b/".into()),
            Read::PrefixKeys("/c/".into()),
        ];
        for r in &reads {
            assert_eq!(&read_from_wire(read_to_wire(r)), r);
        }
        for g in [Guard::Absent("/a".into()), Guard::Revision("/b".into(), 7)] {
            assert_eq!(guard_from_wire(guard_to_wire(&g)), g);
        }
        for w in [
            Write::Put("/a".into(), b"x".to_vec()),
            Write::Delete("/b".into()),
        ] {
            assert_eq!(write_from_wire(write_to_wire(&w)), w);
        }
        let kv = Kv {
            key: "/a".into(),
            value: b"v".to_vec(),
            mod_revision: 3,
        };
        assert_eq!(kv_from_wire(kv_to_wire(kv.clone())), kv);
    }
}
