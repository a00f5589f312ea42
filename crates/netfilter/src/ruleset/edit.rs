//! Changing a programmed table in place ([`ProgrammedTable::edit`]): the record of what the
//! kernel holds is changed entry by entry, each touched set or map journaled once (its value
//! before), each chain put or removed held beside the record until the commit (the record
//! keeps only a fingerprint of a chain's rules), and the plan covers only what was touched —
//! so a one-element change costs the same against 20 chains or 20,000, and nothing is cloned
//! but what is touched. Set
//! elements can be edited one by one ([`Edit::add_elem`], [`Edit::remove_elem`]): then not
//! even the set is cloned, and an interval set's change is planned around the element (an
//! index of its intervals, kept by the table) rather than by normalising the whole set. The
//! journal also undoes the edit when the kernel refuses it (the kernel kept the old table).

use super::elems::{self, Interval, IntervalIndex, KernelElem};
use super::plan::{
    self, Batch, ChainPair, Changes, EditView, ProgrammedTable, Record, apply, plan_changes,
};
use super::{Chain, Ruleset, Set, SetElem, VerdictMap};
use crate::error::NfError;
use crate::socket::NfSocket;
use std::collections::{BTreeMap, BTreeSet};

/// The value of each touched entry before the edit (`None`: it did not exist), and the
/// elements added to and removed from sets edited element by element.
#[derive(Debug, Default)]
struct Journal {
    sets: BTreeMap<String, Option<Set>>,
    maps: BTreeMap<String, Option<VerdictMap>>,
    elems: BTreeMap<String, ElemDelta>,
}

/// What an element-by-element edit did to one set (net: an element added then removed is in
/// neither).
#[derive(Debug, Default)]
struct ElemDelta {
    added: BTreeSet<SetElem>,
    removed: BTreeSet<SetElem>,
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

/// Takes back an element delta.
fn undo_elems(set: &mut Set, delta: ElemDelta) {
    for e in &delta.added {
        set.elems.remove(e);
    }
    set.elems.extend(delta.removed);
}

/// The kernel changes of element-by-element edits: per set, the kernel elements to delete
/// and to add, and for interval sets the kernel intervals that go and come.
type ElemPlan = Vec<(
    String,
    Vec<KernelElem>,
    Vec<KernelElem>,
    Option<IntervalChange>,
)>;
type IntervalChange = (Vec<Interval>, Vec<Interval>);

/// An edit of a [`ProgrammedTable`]'s ruleset: change it, then [`Edit::commit`]. Dropped
/// without a commit, it is undone.
#[derive(Debug)]
pub struct Edit<'a> {
    table: &'a mut ProgrammedTable,
    current: Record,
    /// Chains put (`Some`) or removed (`None`) by the edit: the record's chains change at the
    /// commit.
    chains: BTreeMap<String, Option<Chain>>,
    journal: Journal,
    /// The kernel's state became unknown: the table forgets what it applied.
    lost: bool,
    /// The table was replaced whole and recorded: nothing to undo.
    replaced: bool,
}

impl<'a> Edit<'a> {
    pub(crate) fn new(table: &'a mut ProgrammedTable, current: Record) -> Self {
        Edit {
            table,
            current,
            chains: BTreeMap::new(),
            journal: Journal::default(),
            lost: false,
            replaced: false,
        }
    }

    /// Adds or replaces a chain.
    pub fn put_chain(&mut self, name: &str, chain: Chain) {
        self.chains.insert(name.to_string(), Some(chain));
    }

    pub fn remove_chain(&mut self, name: &str) {
        self.chains.insert(name.to_string(), None);
    }

    /// Journals a set as a whole (its value before the edit), folding in element edits made
    /// so far.
    fn note_set(&mut self, name: &str) {
        self.table.indexes.remove(name);
        if let Some(delta) = self.journal.elems.remove(name) {
            let before = self.current.sets.get(name).cloned().map(|mut set| {
                undo_elems(&mut set, delta);
                set
            });
            self.journal.sets.insert(name.to_string(), before);
            return;
        }
        note(&mut self.journal.sets, &self.current.sets, name);
    }

    /// Adds or replaces a set.
    pub fn put_set(&mut self, name: &str, set: Set) {
        self.note_set(name);
        self.current.sets.insert(name.to_string(), set);
    }

    pub fn remove_set(&mut self, name: &str) {
        self.note_set(name);
        self.current.sets.remove(name);
    }

    /// A set to change in place (its elements: only the difference is sent, though the set
    /// is compared whole; see [`Edit::add_elem`] for one element at a time).
    pub fn set_mut(&mut self, name: &str) -> Option<&mut Set> {
        self.note_set(name);
        self.current.sets.get_mut(name)
    }

    /// Adds one element to a set; whether it was not there. Planned around the element
    /// alone. Refused if the set does not exist or the element does not fit it.
    pub fn add_elem(&mut self, set: &str, elem: SetElem) -> Result<bool, NfError> {
        self.change_elem(set, elem, true)
    }

    /// Removes one element from a set; whether it was there.
    pub fn remove_elem(&mut self, set: &str, elem: &SetElem) -> Result<bool, NfError> {
        self.change_elem(set, *elem, false)
    }

    fn change_elem(&mut self, name: &str, elem: SetElem, add: bool) -> Result<bool, NfError> {
        let set = self
            .current
            .sets
            .get_mut(name)
            .ok_or_else(|| NfError::Input(format!("set {name}: the table does not have it")))?;
        let interval = if set.interval {
            Some(elems::interval_of(name, set.key, &elem)?)
        } else {
            elems::exact_key(name, set.key, &elem)?;
            None
        };
        if set.elems.contains(&elem) == add {
            return Ok(false);
        }
        if self.journal.sets.contains_key(name) {
            // Journaled whole already: planned by comparison.
            if add {
                set.elems.insert(elem);
            } else {
                set.elems.remove(&elem);
            }
            return Ok(true);
        }
        if let Some(i) = interval {
            let index = match self.table.indexes.entry(name.to_string()) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                // Built from the set before this change: what the kernel holds.
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(IntervalIndex::build(name, set)?)
                }
            };
            if add {
                index.insert(i);
            } else {
                index.remove(i);
            }
        }
        let delta = self.journal.elems.entry(name.to_string()).or_default();
        if add {
            set.elems.insert(elem);
            if !delta.removed.remove(&elem) {
                delta.added.insert(elem);
            }
        } else {
            set.elems.remove(&elem);
            if !delta.added.remove(&elem) {
                delta.removed.insert(elem);
            }
        }
        Ok(true)
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

    /// The kernel changes of the element-by-element edits.
    fn elem_plan(&self) -> Result<ElemPlan, NfError> {
        let mut out = Vec::new();
        for (name, delta) in &self.journal.elems {
            if delta.added.is_empty() && delta.removed.is_empty() {
                continue;
            }
            let Some(set) = self.current.sets.get(name) else {
                continue;
            };
            let (mut del, mut add) = (Vec::new(), Vec::new());
            let mut intervals = None;
            if set.interval {
                let index = self.table.indexes.get(name).ok_or_else(|| {
                    NfError::Input(format!("set {name}: element edits without an index"))
                })?;
                let changed = delta
                    .added
                    .iter()
                    .chain(&delta.removed)
                    .map(|e| elems::interval_of(name, set.key, e))
                    .collect::<Result<Vec<_>, _>>()?;
                let (gone, came) = index.diff(&changed);
                let width = elems::key_width(set.key);
                elems::interval_elems(&gone, width, &mut del);
                for e in &mut del {
                    e.open = false;
                }
                elems::interval_elems(&came, width, &mut add);
                intervals = Some((gone, came));
            } else {
                for e in &delta.removed {
                    del.push(KernelElem::key(elems::exact_key(name, set.key, e)?));
                }
                for e in &delta.added {
                    add.push(KernelElem::key(elems::exact_key(name, set.key, e)?));
                }
            }
            out.push((name.clone(), del, add, intervals));
        }
        Ok(out)
    }

    fn plan_with(&self, elem_plan: &ElemPlan) -> Result<Batch, NfError> {
        let j = &self.journal;
        let keys = &self.table.keys;
        let changes = Changes {
            chains: self
                .chains
                .iter()
                .map(|(name, new)| {
                    let old = self.current.chains.get(name);
                    ChainPair {
                        name,
                        old: old.map(|o| o.base),
                        new: new.as_ref(),
                        rules_differ: match (old, new) {
                            (Some(o), Some(n)) => o.print != plan::print(&n.rules, keys),
                            _ => true,
                        },
                    }
                })
                .collect(),
            sets: pairs(&j.sets, &self.current.sets),
            maps: pairs(&j.maps, &self.current.maps),
            set_elems: elem_plan
                .iter()
                .map(|(name, del, add, _)| (name.as_str(), del.clone(), add.clone()))
                .collect(),
        };
        // The record's chains are as before the edit until the commit.
        let old_has_chain = |c: &str| self.current.chains.contains_key(c);
        let view = EditView {
            record: &self.current,
            chains: &self.chains,
        };
        plan_changes(
            changes,
            self.current.family,
            &self.current.name,
            &view,
            &old_has_chain,
        )
    }

    /// The transaction for what was touched (what [`super::plan`] would send for the whole
    /// table before and after, at the cost of the touched entries only).
    pub fn plan(&self) -> Result<Batch, NfError> {
        self.plan_with(&self.elem_plan()?)
    }

    /// Commits the edit in one transaction; returns the number of messages (0: the edit
    /// changed nothing). A refusal undoes the edit (the kernel kept the table as it was; see
    /// [`Edit::commit_or_replace`] to replace the table whole instead); a failure of the
    /// socket leaves the kernel's state unknown, so the table forgets what it applied and its
    /// next sync replaces the table whole.
    pub fn commit(self, sock: &mut NfSocket) -> Result<usize, NfError> {
        self.finish::<fn() -> Ruleset>(sock, None)
    }

    /// [`Edit::commit`], but if the difference is refused (the kernel's table may have
    /// drifted; see [`ProgrammedTable::sync`]) or cannot be planned from the record (a chain
    /// the edit did not bring must be written again), the table is replaced whole, once,
    /// with `whole()` (the wanted table with this edit in it). A refusal of that too undoes
    /// the edit.
    pub fn commit_or_replace(
        self,
        sock: &mut NfSocket,
        whole: impl FnOnce() -> Ruleset,
    ) -> Result<usize, NfError> {
        self.finish(sock, Some(whole))
    }

    fn finish<F: FnOnce() -> Ruleset>(
        mut self,
        sock: &mut NfSocket,
        whole: Option<F>,
    ) -> Result<usize, NfError> {
        let planned = self.elem_plan().and_then(|e| Ok((self.plan_with(&e)?, e)));
        let failed = match planned {
            Ok((batch, elem_plan)) => match apply(sock, &batch) {
                Ok(()) => {
                    for (name, _, _, intervals) in &elem_plan {
                        if let (Some((gone, came)), Some(index)) =
                            (intervals, self.table.indexes.get_mut(name))
                        {
                            index.committed(gone, came);
                        }
                    }
                    let keys = &self.table.keys;
                    for (name, chain) in std::mem::take(&mut self.chains) {
                        match chain {
                            Some(c) => {
                                let record = plan::ChainRecord::of(&c, keys);
                                self.current.chains.insert(name, record);
                            }
                            None => {
                                self.current.chains.remove(&name);
                            }
                        }
                    }
                    self.journal = Journal::default();
                    self.table.bound_indexes();
                    return Ok(batch.len());
                }
                Err(e) if e.errno().is_none() => {
                    self.lost = true;
                    return Err(e);
                }
                Err(e) => e,
            },
            Err(e) => e,
        };
        let Some(whole) = whole else {
            return Err(failed);
        };
        log::warn!(
            "nf_tables table {}: {failed}; replacing the table whole",
            self.current.name
        );
        let wanted = whole();
        let batch = plan::plan(None, &wanted)?;
        match apply(sock, &batch) {
            Ok(()) => {
                // The edit is in `wanted`: nothing to undo, the record is the new table.
                self.journal = Journal::default();
                self.chains.clear();
                self.replaced = true;
                self.table.record(wanted);
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
        if self.replaced {
            // The table recorded the new one already.
            return;
        }
        if self.lost {
            self.table.restore(None);
            return;
        }
        let journal = std::mem::take(&mut self.journal);
        let mut current = std::mem::take(&mut self.current);
        for (name, delta) in journal.elems {
            // The index followed the edit: rebuilt when next needed.
            self.table.indexes.remove(&name);
            if let Some(set) = current.sets.get_mut(&name) {
                undo_elems(set, delta);
            }
        }
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
        table.record(before.clone());
        let mut after = before.clone();
        let mut edit = table.edit().expect("applied");
        let e = SetElem::Net("10.200.0.0/24".parse().expect("net"));
        edit.set_mut("s3").expect("s3").elems.insert(e);
        after.sets.get_mut("s3").expect("s3").elems.insert(e);
        let drop_all = Chain {
            base: None,
            rules: vec![Rule::new(vec![Expr::Verdict(Verdict::Drop)])],
        };
        edit.put_chain("pol-7", drop_all.clone());
        after.chains.insert("pol-7".into(), drop_all);
        // pol-9 and its set go; the map's element moves to pol-1.
        edit.remove_chain("pol-9");
        edit.remove_set("s9");
        after.chains.remove("pol-9");
        after.sets.remove("s9");
        let moved = ("calib".to_string(), Verdict::Goto("pol-1".into()));
        edit.map_mut("dispatch")
            .expect("map")
            .elems
            .insert(moved.0.clone(), moved.1.clone());
        after
            .maps
            .get_mut("dispatch")
            .expect("map")
            .elems
            .insert(moved.0, moved.1);
        // Put again as it was: nothing to send for it.
        edit.put_chain("pol-11", before.chains["pol-11"].clone());
        let v6 = Set::nets(false, ["fd00::/64".parse().expect("net")]);
        edit.put_set("new", v6.clone());
        after.sets.insert("new".into(), v6);
        let whole = plan(Some(&before), &after).expect("plan");
        let only = edit.plan().expect("plan");
        assert_eq!(what(&only), what(&whole));
        assert!(only.len() > 5);
        // Dropped without commit: undone.
        drop(edit);
        assert!(table.holds(&before));
    }

    /// An unchanged chain that names a set recreated with another key must be written again:
    /// the record has no rules for it, so the edit cannot be planned (a commit would replace
    /// the table whole), where the whole-table plan rewrites the chain.
    #[test]
    fn an_edit_that_must_rewrite_a_chain_it_did_not_bring_is_refused() {
        let before = ruleset(3);
        let mut table = ProgrammedTable::new();
        table.record(before.clone());
        let mut edit = table.edit().expect("applied");
        edit.put_set("s1", Set::nets(false, ["fd00::/64".parse().expect("net")]));
        let err = edit.plan().expect_err("pol-1 names s1");
        assert!(
            err.to_string()
                .contains("chain pol-1 must be written again"),
            "{err}"
        );
        // Bringing the chain makes it plannable.
        edit.put_chain("pol-1", before.chains["pol-1"].clone());
        let mut after = before.clone();
        after.sets.insert(
            "s1".into(),
            Set::nets(false, ["fd00::/64".parse().expect("net")]),
        );
        let whole = plan(Some(&before), &after).expect("plan");
        assert_eq!(what(&edit.plan().expect("plan")), what(&whole));
    }

    fn bytes(b: &Batch) -> Vec<Vec<u8>> {
        b.wire().messages().map(<[u8]>::to_vec).collect()
    }

    fn host(i: u32) -> SetElem {
        SetElem::Net(ipnet::IpNet::V4(
            ipnet::Ipv4Net::new((0x0a00_0000 + i).into(), 32).expect("net"),
        ))
    }

    /// Element by element, interval and exact sets: the same messages as the whole-table
    /// plan, through several committed rounds (the interval index follows the kernel), and an
    /// undone round.
    #[test]
    fn element_edits_send_what_the_whole_plan_sends() {
        let mut rs = ruleset(3);
        rs.sets.insert(
            "big".into(),
            Set {
                key: crate::ruleset::SetKey::Ipv4Addr,
                interval: true,
                elems: (0..3_000).map(|i| host(i * 2)).collect(),
            },
        );
        rs.sets.insert(
            "exact".into(),
            Set {
                key: crate::ruleset::SetKey::Ipv4Addr,
                interval: false,
                elems: (0..100).map(host).collect(),
            },
        );
        let mut table = ProgrammedTable::new();
        table.record(rs.clone());
        let mut before = rs;
        for round in 0..6u32 {
            let mut after = before.clone();
            let mut edit = table.edit().expect("edit");
            // Fill a gap (merging two hosts into one interval), take one out again, add a
            // far one, and edit the exact set.
            let mut elems = |set: &str, e: SetElem, add: bool| {
                let s = &mut after.sets.get_mut(set).expect("set").elems;
                if add { s.insert(e) } else { s.remove(&e) }
            };
            assert!(edit.add_elem("big", host(round * 4 + 1)).expect("add"));
            elems("big", host(round * 4 + 1), true);
            assert!(
                edit.remove_elem("big", &host(round * 4 + 100))
                    .expect("remove")
            );
            elems("big", host(round * 4 + 100), false);
            assert!(edit.add_elem("big", host(1_000_000 + round)).expect("add"));
            elems("big", host(1_000_000 + round), true);
            assert!(
                !edit
                    .add_elem("big", host(1_000_000 + round))
                    .expect("again")
            );
            assert!(edit.add_elem("exact", host(500 + round)).expect("add"));
            elems("exact", host(500 + round), true);
            assert!(edit.remove_elem("exact", &host(round)).expect("remove"));
            elems("exact", host(round), false);
            assert!(edit.add_elem("s1", host(77)).is_ok());
            elems("s1", host(77), true);
            assert!(edit.add_elem("exact", SetElem::Ports(1, 1)).is_err());
            assert!(edit.add_elem("nope", host(1)).is_err());
            let whole = plan(Some(&before), &after).expect("plan");
            let only = edit.plan().expect("plan");
            assert_eq!(what(&only), what(&whole), "round {round}");
            assert_eq!(bytes(&only), bytes(&whole), "round {round}");
            if round == 3 {
                drop(edit);
                assert!(table.holds(&before));
                continue;
            }
            // As a commit would, without a kernel: the index takes the change.
            let plan = edit.elem_plan().expect("elems");
            for (name, _, _, intervals) in &plan {
                if let (Some((gone, came)), Some(index)) =
                    (intervals, edit.table.indexes.get_mut(name))
                {
                    index.committed(gone, came);
                }
            }
            edit.journal = Journal::default();
            drop(edit);
            assert!(table.holds(&after));
            before = after;
        }
    }

    /// Past their bound the interval indexes are dropped after a commit, and the next element
    /// edit (index rebuilt from the record) plans what the whole-table plan does.
    #[test]
    fn indexes_past_their_bound_are_dropped_and_rebuilt() {
        let mut rs = ruleset(1);
        let n = u32::try_from(crate::ruleset::plan::INDEXED_MAX).expect("small");
        rs.sets.insert(
            "big".into(),
            Set {
                key: crate::ruleset::SetKey::Ipv4Addr,
                interval: true,
                elems: (0..n / 2 + 1).map(|i| host(i * 2)).collect(),
            },
        );
        let mut table = ProgrammedTable::new();
        table.record(rs.clone());
        let mut edit = table.edit().expect("edit");
        assert!(edit.add_elem("big", host(1)).expect("add"));
        rs.sets.get_mut("big").expect("big").elems.insert(host(1));
        // As a commit would, without a kernel.
        let elem_plan = edit.elem_plan().expect("elems");
        for (name, _, _, intervals) in &elem_plan {
            if let (Some((gone, came)), Some(index)) = (intervals, edit.table.indexes.get_mut(name))
            {
                index.committed(gone, came);
            }
        }
        edit.journal = Journal::default();
        edit.table.bound_indexes();
        assert!(edit.table.indexes.is_empty(), "over the bound: dropped");
        drop(edit);
        assert!(table.holds(&rs));
        let before = rs.clone();
        let mut edit = table.edit().expect("edit");
        assert!(edit.remove_elem("big", &host(2)).expect("remove"));
        rs.sets.get_mut("big").expect("big").elems.remove(&host(2));
        let whole = plan(Some(&before), &rs).expect("plan");
        assert_eq!(bytes(&edit.plan().expect("plan")), bytes(&whole));
    }

    #[test]
    fn nothing_applied_is_nothing_to_edit() {
        let mut table = ProgrammedTable::new();
        assert!(table.edit().is_none());
    }
}
