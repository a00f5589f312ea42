//! The datastore as the logic above sees it: batched reads and guarded, atomic writes,
//! failing with the store's own [`StoreError`].
//!
//! [`Etcd`](crate::Etcd) is the real implementation. [`MemKv`] is an in-memory stand-in
//! with the same revision semantics, for unit tests of the logic only; integration tests
//! run against Debian's etcd.

use crate::error::StoreError;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// One stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    /// Empty for keys-only reads.
    pub value: Vec<u8>,
    /// The revision of the last write to this key: the CAS token.
    pub mod_revision: i64,
}

/// One read of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// One key (zero or one result).
    Key(String),
    /// Every key under a prefix, in key order.
    Prefix(String),
    /// Every key under a prefix, without values (cheap existence scans).
    PrefixKeys(String),
}

/// A lone read, run by `read` (a store's batch call, whatever its error): the shorthands
/// [`KvStore::get`], `list` and `list_keys`, shared with the etcd client's own.
impl Read {
    pub fn key(key: &str) -> Read {
        Read::Key(key.to_string())
    }

    /// Every result of this one read.
    pub fn all<E>(
        self,
        read: impl FnOnce(&[Read]) -> Result<Vec<Vec<Kv>>, E>,
    ) -> Result<Vec<Kv>, E> {
        Ok(read(&[self])?.pop().unwrap_or_default())
    }

    /// Its result, for a key.
    pub fn one<E>(
        self,
        read: impl FnOnce(&[Read]) -> Result<Vec<Vec<Kv>>, E>,
    ) -> Result<Option<Kv>, E> {
        Ok(self.all(read)?.pop())
    }

    /// The keys found, for a prefix.
    pub fn keys<E>(
        self,
        read: impl FnOnce(&[Read]) -> Result<Vec<Vec<Kv>>, E>,
    ) -> Result<Vec<String>, E> {
        Ok(self.all(read)?.into_iter().map(|kv| kv.key).collect())
    }
}

/// A condition a transaction's writes depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// The key does not exist (create).
    Absent(String),
    /// The key is unchanged since it was read at this revision (update, delete).
    Revision(String, i64),
}

impl Guard {
    pub fn key(&self) -> &str {
        match self {
            Guard::Absent(k) | Guard::Revision(k, _) => k,
        }
    }

    /// The guard for writing `key` whose current state is `current` (None: absent).
    pub fn for_current(key: &str, current: Option<&Kv>) -> Guard {
        match current {
            Some(kv) => Guard::Revision(key.to_string(), kv.mod_revision),
            None => Guard::Absent(key.to_string()),
        }
    }
}

/// A write in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(String, Vec<u8>),
    Delete(String),
}

/// The outcome of a guarded transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every guard held; the writes are applied at this revision (the new `mod_revision`
    /// of every key written).
    Applied(i64),
    /// A guard failed; nothing was written. Holds the current state of each guarded key,
    /// in guard order, so the caller can retry without another read.
    Conflict(Vec<Option<Kv>>),
}

impl TxnOutcome {
    pub fn applied(&self) -> bool {
        matches!(self, TxnOutcome::Applied(_))
    }
}

/// What the logic needs of a datastore.
pub trait KvStore {
    /// Runs every read in one round trip, at one revision; results in the order asked.
    fn read(&self, reads: &[Read]) -> Result<Vec<Vec<Kv>>, StoreError>;

    /// Applies `writes` atomically if every guard holds.
    fn txn(&self, guards: &[Guard], writes: &[Write]) -> Result<TxnOutcome, StoreError>;

    /// Where the store is, for messages.
    fn describe(&self) -> String;

    fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        Read::key(key).one(|r| self.read(r))
    }

    fn list(&self, prefix: &str) -> Result<Vec<Kv>, StoreError> {
        Read::Prefix(prefix.into()).all(|r| self.read(r))
    }

    fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Read::PrefixKeys(prefix.into()).keys(|r| self.read(r))
    }
}

/// An in-memory store with etcd's revision semantics. For unit tests of the logic; it is
/// not a datastore.
#[derive(Debug, Default)]
pub struct MemKv {
    state: Mutex<MemState>,
}

#[derive(Debug, Default)]
struct MemState {
    revision: i64,
    keys: BTreeMap<String, (Vec<u8>, i64)>,
    /// Test hook: fail the next N transactions as unreachable.
    fail_txns: usize,
}

impl MemKv {
    pub fn new() -> Self {
        MemKv::default()
    }

    /// Stores `value` unconditionally (fixtures).
    pub fn put(&self, key: &str, value: &[u8]) {
        if let Ok(mut s) = self.state.lock() {
            s.revision += 1;
            let rev = s.revision;
            s.keys.insert(key.to_string(), (value.to_vec(), rev));
        }
    }

    /// Every key and value, for assertions.
    pub fn dump(&self) -> Vec<(String, String)> {
        self.state
            .lock()
            .map(|s| {
                s.keys
                    .iter()
                    .map(|(k, (v, _))| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Makes the next `n` transactions fail as if etcd were unreachable.
    pub fn fail_next_txns(&self, n: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.fail_txns = n;
        }
    }

    fn poisoned() -> StoreError {
        StoreError::failed("in-memory store poisoned")
    }
}

impl KvStore for MemKv {
    fn read(&self, reads: &[Read]) -> Result<Vec<Vec<Kv>>, StoreError> {
        let s = self.state.lock().map_err(|_| Self::poisoned())?;
        let kv = |k: &String, v: &(Vec<u8>, i64), with_value: bool| Kv {
            key: k.clone(),
            value: if with_value { v.0.clone() } else { Vec::new() },
            mod_revision: v.1,
        };
        Ok(reads
            .iter()
            .map(|r| match r {
                Read::Key(k) => s.keys.get(k).map(|v| kv(k, v, true)).into_iter().collect(),
                Read::Prefix(p) | Read::PrefixKeys(p) => s
                    .keys
                    .range(p.clone()..)
                    .take_while(|(k, _)| k.starts_with(p.as_str()))
                    .map(|(k, v)| kv(k, v, matches!(r, Read::Prefix(_))))
                    .collect(),
            })
            .collect())
    }

    fn txn(&self, guards: &[Guard], writes: &[Write]) -> Result<TxnOutcome, StoreError> {
        let mut s = self.state.lock().map_err(|_| Self::poisoned())?;
        if s.fail_txns > 0 {
            s.fail_txns -= 1;
            return Err(StoreError::Unreachable {
                store: self.describe(),
                reason: "injected failure".into(),
            });
        }
        let holds = guards.iter().all(|g| match g {
            Guard::Absent(k) => !s.keys.contains_key(k),
            Guard::Revision(k, rev) => s.keys.get(k).is_some_and(|(_, r)| r == rev),
        });
        if !holds {
            return Ok(TxnOutcome::Conflict(
                guards
                    .iter()
                    .map(|g| {
                        s.keys.get(g.key()).map(|(v, r)| Kv {
                            key: g.key().to_string(),
                            value: v.clone(),
                            mod_revision: *r,
                        })
                    })
                    .collect(),
            ));
        }
        s.revision += 1;
        let rev = s.revision;
        for w in writes {
            match w {
                Write::Put(k, v) => {
                    s.keys.insert(k.clone(), (v.clone(), rev));
                }
                Write::Delete(k) => {
                    s.keys.remove(k);
                }
            }
        }
        Ok(TxnOutcome::Applied(rev))
    }

    fn describe(&self) -> String {
        "in-memory store".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_store_has_etcd_cas_semantics() {
        let m = MemKv::new();
        let put = |k: &str, v: &str| Write::Put(k.into(), v.as_bytes().to_vec());
        assert!(
            m.txn(&[Guard::Absent("/a".into())], &[put("/a", "1")])
                .unwrap()
                .applied()
        );
        let a = m.get("/a").unwrap().unwrap();
        let out = m
            .txn(&[Guard::Absent("/a".into())], &[put("/a", "2")])
            .unwrap();
        assert_eq!(out, TxnOutcome::Conflict(vec![Some(a.clone())]));
        assert!(
            m.txn(
                &[Guard::Revision("/a".into(), a.mod_revision)],
                &[put("/a", "2"), put("/b", "x")]
            )
            .unwrap()
            .applied()
        );
        assert!(
            !m.txn(
                &[Guard::Revision("/a".into(), a.mod_revision)],
                &[put("/a", "3")]
            )
            .unwrap()
            .applied()
        );
        m.put("/c/1", b"y");
        let got = m
            .read(&[
                Read::Prefix("/".into()),
                Read::PrefixKeys("/c/".into()),
                Read::Key("/z".into()),
            ])
            .unwrap();
        assert_eq!(got[0].len(), 3);
        assert_eq!(got[1][0].key, "/c/1");
        assert!(got[1][0].value.is_empty());
        assert!(got[2].is_empty());
        m.fail_next_txns(1);
        assert!(m.txn(&[], &[]).is_err());
        assert!(m.txn(&[], &[]).is_ok());
    }
}
