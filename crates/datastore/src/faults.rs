//! Crash injection for tests of operations made of several transactions.
//!
//! [`FailNthTxn`] wraps a real store (etcd, or [`MemKv`](crate::MemKv) in unit tests) and
//! fails exactly one transaction, the Nth, as if etcd had become unreachable: nothing of
//! it is written and the operation stops there, which is what a process killed just before
//! that transaction leaves behind. Running an operation once per N, then running it again
//! unwrapped, shows that every prefix of its writes can be resumed. It is a test double for
//! the crash only; every read and every other transaction reaches the wrapped store.

use crate::error::StoreError;
use crate::store::{Guard, Kv, KvStore, Read, TxnOutcome, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A store whose `fail_at`-th transaction (counting from 1) fails as unreachable.
pub struct FailNthTxn<'a> {
    inner: &'a dyn KvStore,
    fail_at: usize,
    seen: AtomicUsize,
}

impl<'a> FailNthTxn<'a> {
    /// `fail_at` 0 never fails (to count an operation's transactions).
    pub fn new(inner: &'a dyn KvStore, fail_at: usize) -> Self {
        FailNthTxn {
            inner,
            fail_at,
            seen: AtomicUsize::new(0),
        }
    }

    /// How many transactions were attempted, the failed one included.
    pub fn txns(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }

    /// Whether the injected failure happened.
    pub fn failed(&self) -> bool {
        self.fail_at != 0 && self.txns() >= self.fail_at
    }
}

impl KvStore for FailNthTxn<'_> {
    fn read(&self, reads: &[Read]) -> Result<Vec<Vec<Kv>>, StoreError> {
        self.inner.read(reads)
    }

    fn txn(&self, guards: &[Guard], writes: &[Write]) -> Result<TxnOutcome, StoreError> {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fail_at {
            return Err(StoreError::Unreachable {
                store: self.inner.describe(),
                reason: format!("injected failure of transaction {n}"),
            });
        }
        self.inner.txn(guards, writes)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemKv;

    #[test]
    fn only_the_nth_transaction_fails_and_writes_nothing() {
        let mem = MemKv::new();
        let store = FailNthTxn::new(&mem, 2);
        let put = |k: &str| vec![Write::Put(k.into(), b"v".to_vec())];
        assert!(store.txn(&[], &put("/a")).expect("first").applied());
        assert!(!store.failed());
        let err = store.txn(&[], &put("/b")).expect_err("second fails");
        assert!(err.is_unreachable());
        assert!(store.failed());
        assert!(store.txn(&[], &put("/c")).expect("third").applied());
        assert_eq!(store.txns(), 3);
        let keys: Vec<String> = mem.dump().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["/a", "/c"]);
        let never = FailNthTxn::new(&mem, 0);
        assert!(never.txn(&[], &put("/d")).expect("never fails").applied());
        assert!(!never.failed());
    }
}
