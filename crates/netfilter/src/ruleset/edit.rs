//! Changing a programmed table in place ([`ProgrammedTable::edit`]): the record of what the
//! kernel holds is changed entry by entry, each touched chain, set or map journaled once
//! (its value before), and the plan covers only the journal — so a one-element change costs
//! the same against 20 chains or 20,000, and nothing is cloned but what is touched. The
//! journal also undoes the edit when the kernel refuses it (the kernel kept the old table).

use super::plan::{Batch, Changes, ProgrammedTable, apply, plan_changes};
use super::{Chain, Ruleset, Set, VerdictMap};
use crate::error::NfError;
use crate::socket::NfSocket;
use std::collections::BTreeMap;

/// The value of each touched entry before the edit (`None`: it did not exist).
#[derive(Debug, Default)]
struct Journal {
    chains: BTreeMap<String, Option<Chain>>,
    sets: BTreeMap<String, Option<Set>>,
    maps: BTreeMap<String, Option<VerdictMap>>,
}

/// Records `name`'s value before its first change.
fn note<T: Clone>(
    journal: &mut BTreeMap<String, Option<T>>,
    live: &BTreeMap<String, T>,
    name: &str,
) {
    if !journal.contains_key(name) {
        journal.insert(name.to_string(), live.get(name).cloned());
    }
}

/// Each journaled name with its value before and now.
fn pairs<'a, T>(
    journal: &'a BTreeMap<String, Option<T>>,
    live: &'a BTreeMap<String, T>,
) -> Vec<(&'a str, Option<&'a T>, Option<&'a T>)> {
    journal
        .iter()
        .map(|(name, before)| (name.as_str(), before.as_ref(), live.get(name)))
        .collect()
}

/// Puts journaled values back.
fn undo<T>(journal: BTreeMap<String, Option<T>>, live: &mut BTreeMap<String, T>) {
    for (name, before) in journal {
        match before {
            Some(v) => live.insert(name, v),
            None => live.remove(&name),
        };
    }
}

/// An edit of a [`ProgrammedTable`]'s ruleset: change it, then [`Edit::commit`]. Dropped
/// without a commit, it is undone.
#[derive(Debug)]
pub struct Edit<'a> {
    table: &'a mut ProgrammedTable,
    current: Ruleset,
    journal: Journal,
    /// The kernel's state became unknown: the table forgets what it applied.
    lost: bool,
}

impl<'a> Edit<'a> {
    pub(crate) fn new(table: &'a mut ProgrammedTable, current: Ruleset) -> Self {
        Edit {
            table,
            current,
            journal: Journal::default(),
            lost: false,
        }
    }

    /// The ruleset as edited so far.
    pub fn ruleset(&self) -> &Ruleset {
        &self.current
    }

    /// Adds or replaces a chain.
    pub fn put_chain(&mut self, name: &str, chain: Chain) {
        note(&mut self.journal.chains, &self.current.chains, name);
        self.current.chains.insert(name.to_string(), chain);
    }

    pub fn remove_chain(&mut self, name: &str) {
        note(&mut self.journal.chains, &self.current.chains, name);
        self.current.chains.remove(name);
    }

    /// A chain to change in place.
    pub fn chain_mut(&mut self, name: &str) -> Option<&mut Chain> {
        note(&mut self.journal.chains, &self.current.chains, name);
        self.current.chains.get_mut(name)
    }

    /// Adds or replaces a set.
    pub fn put_set(&mut self, name: &str, set: Set) {
        note(&mut self.journal.sets, &self.current.sets, name);
        self.current.sets.insert(name.to_string(), set);
    }

    pub fn remove_set(&mut self, name: &str) {
        note(&mut self.journal.sets, &self.current.sets, name);
        self.current.sets.remove(name);
    }

    /// A set to change in place (its elements: only the difference is sent).
    pub fn set_mut(&mut self, name: &str) -> Option<&mut Set> {
        note(&mut self.journal.sets, &self.current.sets, name);
        self.current.sets.get_mut(name)
    }

    /// Adds or replaces a verdict map.
    pub fn put_map(&mut self, name: &str, map: VerdictMap) {
        note(&mut self.journal.maps, &self.current.maps, name);
        self.current.maps.insert(name.to_string(), map);
    }

    pub fn remove_map(&mut self, name: &str) {
        note(&mut self.journal.maps, &self.current.maps, name);
        self.current.maps.remove(name);
    }

    /// A verdict map to change in place.
    pub fn map_mut(&mut self, name: &str) -> Option<&mut VerdictMap> {
        note(&mut self.journal.maps, &self.current.maps, name);
        self.current.maps.get_mut(name)
    }

    /// The transaction for what was touched (what [`super::plan`] would send for the whole
    /// table before and after, at the cost of the touched entries only).
    pub fn plan(&self) -> Result<Batch, NfError> {
        let j = &self.journal;
        let changes = Changes {
            chains: pairs(&j.chains, &self.current.chains),
            sets: pairs(&j.sets, &self.current.sets),
            maps: pairs(&j.maps, &self.current.maps),
        };
        let old_has_chain = |c: &str| match j.chains.get(c) {
            Some(before) => before.is_some(),
            None => self.current.chains.contains_key(c),
        };
        plan_changes(changes, &self.current, &old_has_chain)
    }

    /// Commits the edit in one transaction; returns the number of messages (0: the edit
    /// changed nothing). A refusal undoes the edit (the kernel kept the table as it was); a
    /// failure of the socket leaves the kernel's state unknown, so the table forgets what it
    /// applied and its next sync replaces the table whole.
    pub fn commit(mut self, sock: &mut NfSocket) -> Result<usize, NfError> {
        let batch = self.plan()?;
        match apply(sock, &batch) {
            Ok(()) => {
                self.journal = Journal::default();
                Ok(batch.len())
            }
            Err(e) => {
                self.lost = e.errno().is_none();
                Err(e)
            }
        }
    }
}

impl Drop for Edit<'_> {
    fn drop(&mut self) {
        if self.lost {
            self.table.restore(None);
            return;
        }
        let journal = std::mem::take(&mut self.journal);
        let mut current = std::mem::take(&mut self.current);
        undo(journal.chains, &mut current.chains);
        undo(journal.sets, &mut current.sets);
        undo(journal.maps, &mut current.maps);
        self.table.restore(Some(current));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::{self, Expr, Verdict};
    use crate::ruleset::{Rule, SetElem, plan};

    fn ruleset(n: usize) -> Ruleset {
        let mut rs = Ruleset::new("calico");
        for i in 0..n {
            rs.sets.insert(
                format!("s{i}"),
                Set::nets(true, [format!("10.{i}.0.0/16").parse().expect("net")]),
            );
            rs.chains.insert(
                format!("pol-{i}"),
                Chain {
                    base: None,
                    rules: vec![Rule::new(
                        [
                            nft::match_addr_set(true, true, &format!("s{i}"), false),
                            vec![Expr::Verdict(Verdict::Return)],
                        ]
                        .concat(),
                    )],
                },
            );
        }
        let mut map = VerdictMap::default();
        map.elems
            .insert("calia".into(), Verdict::Jump("pol-0".into()));
        rs.maps.insert("dispatch".into(), map);
        rs
    }

    fn what(b: &Batch) -> Vec<String> {
        b.descriptions().to_vec()
    }

    /// An edit plans exactly what `plan` plans for the whole table before and after.
    #[test]
    fn an_edit_plans_what_the_whole_table_plan_would() {
        let before = ruleset(50);
        let mut table = ProgrammedTable::new();
        table.restore(Some(before.clone()));
        let mut edit = table.edit().expect("applied");
        edit.set_mut("s3")
            .expect("s3")
            .elems
            .insert(SetElem::Net("10.200.0.0/24".parse().expect("net")));
        edit.put_chain(
            "pol-7",
            Chain {
                base: None,
                rules: vec![Rule::new(vec![Expr::Verdict(Verdict::Drop)])],
            },
        );
        // pol-9 and its set go; the map's element moves to pol-1.
        edit.remove_chain("pol-9");
        edit.remove_set("s9");
        edit.map_mut("dispatch")
            .expect("map")
            .elems
            .insert("calib".into(), Verdict::Goto("pol-1".into()));
        // Touched but left as it was: nothing to send for it.
        let _ = edit.chain_mut("pol-11");
        edit.put_set("new", Set::nets(false, ["fd00::/64".parse().expect("net")]));
        let whole = plan(Some(&before), edit.ruleset()).expect("plan");
        let only = edit.plan().expect("plan");
        assert_eq!(what(&only), what(&whole));
        assert!(only.len() > 5);
        // Dropped without commit: undone.
        drop(edit);
        assert_eq!(table.applied(), Some(&before));
    }

    #[test]
    fn nothing_applied_is_nothing_to_edit() {
        let mut table = ProgrammedTable::new();
        assert!(table.edit().is_none());
    }
}
