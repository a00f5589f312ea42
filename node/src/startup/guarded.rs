//! Guarded read-modify-write of one key: the new value is computed from the value read and
//! written only if the key is still as read (created only if still absent). When someone
//! else wrote in between, the value they wrote is taken as the new starting point and the
//! change computed again: a concurrent start-up or `calicoctl apply` is never overwritten.

use super::StartupError;
use calico_datastore::{Guard, Kv, KvStore, TxnOutcome, Write};

/// How many times a key may change under us before we give up.
pub const MAX_ATTEMPTS: usize = 20;

/// What [`converge`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The key already held what we wanted.
    Unchanged,
    Created,
    Updated,
}

/// Brings `key` to what `desired(current)` says: `Ok(None)` means "leave it as it is".
pub fn converge(
    store: &dyn KvStore,
    key: &str,
    mut desired: impl FnMut(Option<&Kv>) -> Result<Option<Vec<u8>>, StartupError>,
) -> Result<Outcome, StartupError> {
    let mut current = store.get(key)?;
    for _ in 0..MAX_ATTEMPTS {
        let Some(value) = desired(current.as_ref())? else {
            return Ok(Outcome::Unchanged);
        };
        let guard = Guard::for_current(key, current.as_ref());
        match store.txn(&[guard], &[Write::Put(key.to_string(), value)])? {
            TxnOutcome::Applied(_) => {
                return Ok(if current.is_some() {
                    Outcome::Updated
                } else {
                    Outcome::Created
                });
            }
            TxnOutcome::Conflict(now) => {
                log::info!("{key} changed while we were writing it; reading it again");
                current = now.into_iter().next().flatten();
            }
        }
    }
    Err(StartupError::Contended {
        key: key.to_string(),
        attempts: MAX_ATTEMPTS,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use calico_datastore::MemKv;
    use std::cell::Cell;

    #[test]
    fn a_concurrent_write_is_read_again_and_built_upon() {
        let m = MemKv::new();
        m.put("/k", b"a");
        let calls = Cell::new(0);
        // Another writer appends "b" between our read and our write, once.
        let out = converge(&m, "/k", |cur| {
            calls.set(calls.get() + 1);
            let v = cur.map(|kv| kv.value.clone()).unwrap_or_default();
            if calls.get() == 1 {
                m.put("/k", b"ab");
            }
            if v.ends_with(b"+") {
                return Ok(None);
            }
            let mut v = v;
            v.push(b'+');
            Ok(Some(v))
        })
        .unwrap();
        assert_eq!(out, Outcome::Updated);
        assert_eq!(m.get("/k").unwrap().unwrap().value, b"ab+");
        assert_eq!(calls.get(), 2);
        let again = converge(&m, "/k", |cur| {
            Ok((!cur.unwrap().value.ends_with(b"+")).then(Vec::new))
        })
        .unwrap();
        assert_eq!(again, Outcome::Unchanged);
    }

    #[test]
    fn create_only_if_absent() {
        let m = MemKv::new();
        assert_eq!(
            converge(&m, "/n", |_| Ok(Some(b"x".to_vec()))).unwrap(),
            Outcome::Created
        );
        let out = converge(&m, "/n", |cur| Ok(cur.is_none().then(|| b"y".to_vec()))).unwrap();
        assert_eq!(out, Outcome::Unchanged);
        assert_eq!(m.get("/n").unwrap().unwrap().value, b"x");
    }
}
