//! The transaction that takes the kernel from one [`Ruleset`] to another ([`plan`]), and its
//! commit ([`apply`]).
//!
//! Order inside the one batch matters: the kernel resolves names and counts references as it
//! reads each message (a chain or set still referenced cannot be deleted; a rule cannot name
//! what does not exist yet), and checks the whole at commit. So a batch:
//! 1. flushes the chains that change or go (their jumps and lookups stop referencing),
//! 2. deletes verdict-map elements that go or change (their jumps too),
//! 3. deletes sets and maps that go (or are recreated with another key),
//! 4. deletes chains that go (or are recreated: a base chain's hook, priority or kind),
//! 5. creates new sets, maps and chains, and updates base-chain policies,
//! 6. deletes, then adds, set elements, and adds map elements,
//! 7. writes the rules of the chains that changed or are new.
//!
//! A chain is compared with its previous self structurally (no encoding): unchanged chains
//! cost a comparison and no message. A changed chain is flushed and written whole (chain
//! granularity: no kernel rule handles needed, so a plan is a pure function of two
//! rulesets).

use super::edit::Edit;
use super::elems::{self, IntervalIndex, KernelElem};
use super::{BaseChain, Chain, ChainPolicy, Family, Rule, Ruleset, Set, SetKey, VerdictMap};
use crate::error::NfError;
use crate::nft::{self, Expr};
use crate::socket::{Message, NLM_F_CREATE, NLM_F_EXCL, NfSocket, WireBatch};
use calico_netlink::attr::Attrs;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, RandomState};

/// One nf_tables transaction: its messages, framed as they are planned (no message objects
/// kept), and what each does (named in errors: the kernel's refusal says which message it
/// refused).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    msgs: WireBatch,
    what: Vec<String>,
}

impl Batch {
    /// The messages as they go to the kernel.
    pub fn wire(&self) -> &WireBatch {
        &self.msgs
    }

    /// What each message does, in order ("add chain filter-cali-tw-x", ...).
    pub fn descriptions(&self) -> &[String] {
        &self.what
    }

    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    fn push(&mut self, what: String, msg: Message) {
        self.what.push(what);
        self.msgs.push(&msg);
    }
}

/// Commits `batch` in one transaction: all of it or, on a refusal, nothing. The error names
/// the message the kernel refused (its description in the batch). An empty batch is no
/// system call.
pub fn apply(sock: &mut NfSocket, batch: &Batch) -> Result<(), NfError> {
    if batch.is_empty() {
        return Ok(());
    }
    sock.send_batch(&batch.what, &batch.msgs).map(|_| ())
}

/// What the record of a programmed table keeps of a chain: enough to plan against it
/// without its rules (a chain's rules are most of a policy table's size, and they are needed
/// only when the chain is written, which is from a wanted chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainRecord {
    pub base: Option<BaseChain>,
    /// The rules' hash, keyed per table ([`ProgrammedTable`]'s random keys: no one can craft
    /// two rule lists that collide), and their number.
    pub print: (u64, usize),
    /// What the rules name (to find the chains a removal or a recreation affects).
    pub refs: Box<[OwnedRef]>,
}

/// A name a rule holds ([`Ref`], owned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OwnedRef {
    Chain(Box<str>),
    Set(Box<str>),
    Map(Box<str>),
    SetOrMap(Box<str>),
}

impl OwnedRef {
    fn as_ref(&self) -> Ref<'_> {
        match self {
            OwnedRef::Chain(n) => Ref::Chain(n),
            OwnedRef::Set(n) => Ref::Set(n),
            OwnedRef::Map(n) => Ref::Map(n),
            OwnedRef::SetOrMap(n) => Ref::SetOrMap(n),
        }
    }
}

impl ChainRecord {
    pub(crate) fn of(chain: &Chain, keys: &RandomState) -> Self {
        let mut refs = Vec::new();
        refs_of(&chain.rules, |r| {
            let owned = match r {
                Ref::Chain(n) => OwnedRef::Chain(n.into()),
                Ref::Set(n) => OwnedRef::Set(n.into()),
                Ref::Map(n) => OwnedRef::Map(n.into()),
                Ref::SetOrMap(n) => OwnedRef::SetOrMap(n.into()),
            };
            if !refs.contains(&owned) {
                refs.push(owned);
            }
        });
        ChainRecord {
            base: chain.base,
            print: print(&chain.rules, keys),
            refs: refs.into_boxed_slice(),
        }
    }
}

/// A rule list's fingerprint under `keys`.
pub(crate) fn print(rules: &[Rule], keys: &RandomState) -> (u64, usize) {
    (keys.hash_one(rules), rules.len())
}

/// What the kernel holds of one table, as applied: sets and maps whole (their elements are
/// planned by difference), chains as [`ChainRecord`]s.
#[derive(Debug, Clone, Default)]
pub(crate) struct Record {
    pub family: Family,
    pub name: String,
    pub chains: BTreeMap<String, ChainRecord>,
    pub sets: BTreeMap<String, Set>,
    pub maps: BTreeMap<String, VerdictMap>,
}

impl Record {
    /// The record of `rs`. What it keeps is copied once `rs`'s rules are gone, so that it
    /// settles into the room they leave rather than between them (a whole table's rules
    /// are tens of megabytes, freed as soon as they are applied, and what outlives them
    /// would otherwise keep the pages around it resident).
    fn of(rs: Ruleset, keys: &RandomState) -> Self {
        let Ruleset {
            family,
            name,
            chains,
            sets,
            maps,
        } = rs;
        let records: BTreeMap<String, ChainRecord> = chains
            .iter()
            .map(|(n, c)| (n.clone(), ChainRecord::of(c, keys)))
            .collect();
        drop(chains);
        Record {
            family,
            name,
            chains: records,
            sets,
            maps,
        }
    }
}

/// Entries the interval indexes may hold between edits (see
/// [`ProgrammedTable::bound_indexes`]).
pub(crate) const INDEXED_MAX: usize = 100_000;

/// A table as this process last programmed it: plans each change against what was applied
/// and keeps the new state only once the kernel took it.
///
/// The record is compact: sets and maps whole, but of each chain only its hook, a keyed hash
/// of its rules and the names they hold ([`ChainRecord`]), so that at scale it costs a
/// fraction of the rules it stands for. A chain is written from the wanted state only;
/// an edit that would have to write a chain it did not bring (an unchanged chain that names
/// a set being recreated) cannot be planned from the record: [`Edit::commit_or_replace`]
/// then replaces the table whole.
///
/// Starts knowing nothing, so the first [`ProgrammedTable::sync`] replaces whatever a previous
/// run left (atomically). A refusal by the kernel leaves the table as it was (the transaction
/// is all or nothing), so the record stays; any other failure (the socket's) leaves the
/// kernel's state unknown, so the record is dropped and the next sync replaces the table.
#[derive(Debug, Default)]
pub struct ProgrammedTable {
    applied: Option<Record>,
    /// Keys of the chains' fingerprints (random per table).
    pub(crate) keys: RandomState,
    /// Interval sets edited element by element: their element and kernel intervals (see
    /// [`Edit::add_elem`]); dropped whenever a set changes otherwise.
    pub(crate) indexes: BTreeMap<String, IntervalIndex>,
}

impl ProgrammedTable {
    /// Nothing in the kernel trusted yet.
    pub fn new() -> Self {
        ProgrammedTable::default()
    }

    /// Whether what the kernel holds is known (a sync went in and nothing was lost since).
    pub fn is_programmed(&self) -> bool {
        self.applied.is_some()
    }

    /// Whether the record is what syncing `rs` would leave (tests: the record follows the
    /// kernel).
    pub fn holds(&self, rs: &Ruleset) -> bool {
        let Some(r) = &self.applied else {
            return false;
        };
        r.family == rs.family
            && r.name == rs.name
            && r.sets == rs.sets
            && r.maps == rs.maps
            && r.chains.len() == rs.chains.len()
            && rs
                .chains
                .iter()
                .all(|(n, c)| r.chains.get(n) == Some(&ChainRecord::of(c, &self.keys)))
    }

    /// Forgets what was applied: the next sync replaces the table whole.
    pub fn forget(&mut self) {
        self.applied = None;
        self.indexes.clear();
    }

    /// An in-place edit of what was applied, planned at the cost of what it touches (see
    /// [`Edit`]); `None` when nothing is applied yet (sync a whole ruleset first).
    pub fn edit(&mut self) -> Option<Edit<'_>> {
        let current = self.applied.take()?;
        Some(Edit::new(self, current))
    }

    pub(crate) fn restore(&mut self, applied: Option<Record>) {
        if applied.is_none() {
            self.indexes.clear();
        }
        self.applied = applied;
    }

    /// Drops the interval indexes once they hold more than [`INDEXED_MAX`] entries (about
    /// 50 bytes each): every set edited element by element keeps one, so over a long run
    /// they would come to cost more than the sets; dropped, they are rebuilt from the record
    /// when next needed (the cost of one pass over that set).
    pub(crate) fn bound_indexes(&mut self) {
        if self.indexes.values().map(IntervalIndex::len).sum::<usize>() > INDEXED_MAX {
            self.indexes.clear();
        }
    }

    /// Records `rs` as what the kernel holds (it took it whole).
    pub(crate) fn record(&mut self, rs: Ruleset) {
        self.indexes.clear();
        self.applied = Some(Record::of(rs, &self.keys));
    }

    /// Makes the kernel's table `new` in one transaction; returns the number of messages
    /// sent (0: nothing changed). On error, `new` is dropped and the record is as above.
    ///
    /// A refused difference may mean the kernel's table drifted from the record (another tool
    /// deleted or changed it): the difference is then retried once as a whole replace, and
    /// only if that is refused too is the error returned (the replace's, which names what the
    /// kernel refused in `new` itself).
    pub fn sync(&mut self, sock: &mut NfSocket, new: Ruleset) -> Result<usize, NfError> {
        let batch = match &self.applied {
            Some(old) => plan_from_record(old, &new, &self.keys)?,
            None => plan(None, &new)?,
        };
        // Sets may change wholesale: indexes are rebuilt when next needed.
        self.indexes.clear();
        match apply_or_replace(sock, &batch, self.applied.is_some(), &new) {
            Ok((sent, _)) => {
                // The messages go before the record is made (see `Record::of`).
                drop(batch);
                self.record(new);
                Ok(sent)
            }
            Err(e) => {
                if e.errno().is_none() {
                    self.applied = None;
                }
                Err(e)
            }
        }
    }
}

/// Applies `batch`, a difference when `incremental`; if the kernel refuses a difference,
/// replaces the table with `new` whole. Returns the number of messages that were committed,
/// and whether it was the replace.
pub(crate) fn apply_or_replace(
    sock: &mut NfSocket,
    batch: &Batch,
    incremental: bool,
    new: &Ruleset,
) -> Result<(usize, bool), NfError> {
    match apply(sock, batch) {
        Ok(()) => Ok((batch.len(), false)),
        Err(e) if incremental && e.errno().is_some() => {
            log::warn!(
                "nf_tables table {}: {e}; replacing the table whole",
                new.name
            );
            let whole = plan(None, new)?;
            apply(sock, &whole).map(|()| (whole.len(), true))
        }
        Err(e) => Err(e),
    }
}

/// The transaction that makes the kernel's table `new`, given that `old` is what was applied
/// last (the kernel is assumed to hold exactly that). With `old = None` nothing in the kernel
/// is trusted: the table is replaced whole, atomically (added so its deletion cannot fail,
/// deleted, and created again). Refuses (before any kernel call) a ruleset that names a chain,
/// set or map it does not have, or an element that does not fit its set.
pub fn plan(old: Option<&Ruleset>, new: &Ruleset) -> Result<Batch, NfError> {
    match old {
        Some(o) if o.family == new.family && o.name == new.name => {
            let mut p = Planner::new(new);
            p.incremental(Changes::all(o, new), new, &|c| o.chains.contains_key(c))?;
            Ok(p.batch)
        }
        _ => replace(old.map(|o| (o.family, o.name.as_str())), new),
    }
}

/// [`plan`] from a record of what was applied.
fn plan_from_record(old: &Record, new: &Ruleset, keys: &RandomState) -> Result<Batch, NfError> {
    if old.family != new.family || old.name != new.name {
        return replace(Some((old.family, old.name.as_str())), new);
    }
    let mut p = Planner::new(new);
    let changes = Changes::joined(
        (&old.chains, &old.sets, &old.maps),
        new,
        |a| a.base,
        |a, b| a.print == print(&b.rules, keys),
    );
    p.incremental(changes, new, &|c| old.chains.contains_key(c))?;
    Ok(p.batch)
}

/// The whole replace of table `old` (when known: it goes, renamed or not) by `new`.
fn replace(old: Option<(Family, &str)>, new: &Ruleset) -> Result<Batch, NfError> {
    let mut p = Planner::new(new);
    if let Some((family, name)) = old
        && (family != new.family || name != new.name)
    {
        // Renamed: the old table goes in the same transaction.
        p.replace_table(family, name, false);
    }
    p.replace_table(new.family, &new.name, true);
    let empty = Ruleset {
        family: new.family,
        name: new.name.clone(),
        ..Ruleset::default()
    };
    p.incremental(Changes::all(&empty, new), new, &|_| false)?;
    Ok(p.batch)
}

struct Planner<'a> {
    family: u8,
    table: &'a str,
    batch: Batch,
}

impl<'a> Planner<'a> {
    fn new(new: &'a Ruleset) -> Self {
        Planner {
            family: new.family.nfproto(),
            table: &new.name,
            batch: Batch::default(),
        }
    }
}

/// The batch for only `changes` (what an edit touched) towards `new`, whose table exists
/// and held the changes' old side.
pub(crate) fn plan_changes(
    changes: Changes<'_>,
    family: Family,
    table: &str,
    new: &dyn View,
    old_has_chain: &dyn Fn(&str) -> bool,
) -> Result<Batch, NfError> {
    let mut p = Planner {
        family: family.nfproto(),
        table,
        batch: Batch::default(),
    };
    p.incremental(changes, new, old_has_chain)?;
    Ok(p.batch)
}

/// The wanted table as the planner reads it: a whole [`Ruleset`], or an edit (the record
/// with the chains the edit brings).
pub(crate) trait View {
    /// Whether the chain exists, and its hook.
    fn chain(&self, name: &str) -> Option<Option<BaseChain>>;
    /// The rules of a chain (`None`: not known, only its record).
    fn rules(&self, name: &str) -> Option<&[Rule]>;
    fn has_set(&self, name: &str) -> bool;
    fn has_map(&self, name: &str) -> bool;
    fn maps(&self) -> &BTreeMap<String, VerdictMap>;
    /// Every chain with each name its rules hold.
    fn each_ref(&self, f: &mut dyn FnMut(&str, Ref<'_>));
}

impl View for Ruleset {
    fn chain(&self, name: &str) -> Option<Option<BaseChain>> {
        self.chains.get(name).map(|c| c.base)
    }

    fn rules(&self, name: &str) -> Option<&[Rule]> {
        self.chains.get(name).map(|c| c.rules.as_slice())
    }

    fn has_set(&self, name: &str) -> bool {
        self.sets.contains_key(name)
    }

    fn has_map(&self, name: &str) -> bool {
        self.maps.contains_key(name)
    }

    fn maps(&self) -> &BTreeMap<String, VerdictMap> {
        &self.maps
    }

    fn each_ref(&self, f: &mut dyn FnMut(&str, Ref<'_>)) {
        for (name, chain) in &self.chains {
            refs_of(&chain.rules, |r| f(name, r));
        }
    }
}

/// An edit's wanted table: the record (its sets and maps already edited) and the chains the
/// edit put (`Some`) or removed (`None`).
pub(crate) struct EditView<'a> {
    pub record: &'a Record,
    pub chains: &'a BTreeMap<String, Option<Chain>>,
}

impl View for EditView<'_> {
    fn chain(&self, name: &str) -> Option<Option<BaseChain>> {
        match self.chains.get(name) {
            Some(c) => c.as_ref().map(|c| c.base),
            None => self.record.chains.get(name).map(|c| c.base),
        }
    }

    fn rules(&self, name: &str) -> Option<&[Rule]> {
        self.chains.get(name)?.as_ref().map(|c| c.rules.as_slice())
    }

    fn has_set(&self, name: &str) -> bool {
        self.record.sets.contains_key(name)
    }

    fn has_map(&self, name: &str) -> bool {
        self.record.maps.contains_key(name)
    }

    fn maps(&self) -> &BTreeMap<String, VerdictMap> {
        &self.record.maps
    }

    fn each_ref(&self, f: &mut dyn FnMut(&str, Ref<'_>)) {
        for (name, c) in &self.record.chains {
            if !self.chains.contains_key(name) {
                for r in c.refs.iter() {
                    f(name, r.as_ref());
                }
            }
        }
        for (name, c) in self.chains {
            if let Some(c) = c {
                refs_of(&c.rules, |r| f(name, r));
            }
        }
    }
}

/// A name, and what it names before and after: in both, or one of them.
pub(crate) type Pair<'a, T> = (&'a str, Option<&'a T>, Option<&'a T>);

/// A chain before (whether it existed, and its hook) and after, and whether its rules
/// differ.
#[derive(Clone, Copy)]
pub(crate) struct ChainPair<'a> {
    pub name: &'a str,
    pub old: Option<Option<BaseChain>>,
    pub new: Option<&'a Chain>,
    pub rules_differ: bool,
}

/// What may differ between the applied table and the wanted one, by name, in name order:
/// every entry of both ([`join`]), or only those an edit touched.
pub(crate) struct Changes<'a> {
    pub chains: Vec<ChainPair<'a>>,
    pub sets: Vec<Pair<'a, Set>>,
    pub maps: Vec<Pair<'a, VerdictMap>>,
    /// Kernel elements to delete and to add in sets edited element by element (not in
    /// `sets`).
    pub set_elems: Vec<(&'a str, Vec<KernelElem>, Vec<KernelElem>)>,
}

impl<'a> Changes<'a> {
    /// Every name of either ruleset.
    fn all(old: &'a Ruleset, new: &'a Ruleset) -> Self {
        Changes::joined(
            (&old.chains, &old.sets, &old.maps),
            new,
            |a| a.base,
            |a, b| a.rules == b.rules,
        )
    }

    /// Every name of `old` (chains of any kind `C`: a ruleset's, or a record's) and of `new`;
    /// `base` reads an old chain's hook, `same_rules` compares its rules with the new one's.
    fn joined<C>(
        (chains, sets, maps): OldTable<'a, C>,
        new: &'a Ruleset,
        base: impl Fn(&C) -> Option<BaseChain>,
        same_rules: impl Fn(&C, &Chain) -> bool,
    ) -> Self {
        Changes {
            chains: join(chains, &new.chains)
                .into_iter()
                .map(|(name, a, b)| ChainPair {
                    name,
                    old: a.map(&base),
                    new: b,
                    rules_differ: match (a, b) {
                        (Some(a), Some(b)) => !same_rules(a, b),
                        _ => true,
                    },
                })
                .collect(),
            sets: join(sets, &new.sets),
            maps: join(maps, &new.maps),
            set_elems: Vec::new(),
        }
    }
}

/// The applied table's chains, sets and maps, as [`Changes::joined`] reads them.
type OldTable<'a, C> = (
    &'a BTreeMap<String, C>,
    &'a BTreeMap<String, Set>,
    &'a BTreeMap<String, VerdictMap>,
);

/// Merges two maps by key in one pass (no lookups: both are sorted).
fn join<'a, A, B>(
    a: &'a BTreeMap<String, A>,
    b: &'a BTreeMap<String, B>,
) -> Vec<(&'a str, Option<&'a A>, Option<&'a B>)> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut ia, mut ib) = (a.iter().peekable(), b.iter().peekable());
    loop {
        let next = match (ia.peek(), ib.peek()) {
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => return out,
        };
        out.push(
            match next {
                std::cmp::Ordering::Less => ia.next().map(|(k, v)| (k.as_str(), Some(v), None)),
                std::cmp::Ordering::Greater => ib.next().map(|(k, v)| (k.as_str(), None, Some(v))),
                std::cmp::Ordering::Equal => ia
                    .next()
                    .zip(ib.next())
                    .map(|((k, a), (_, b))| (k.as_str(), Some(a), Some(b))),
            }
            .unwrap_or(("", None, None)),
        );
    }
}

/// What a rule names.
pub(crate) enum Ref<'a> {
    Chain(&'a str),
    Set(&'a str),
    Map(&'a str),
    /// The legacy `Expr::Lookup`, which may name a set or a map.
    SetOrMap(&'a str),
}

fn refs_of<'a>(rules: &'a [Rule], mut f: impl FnMut(Ref<'a>)) {
    for rule in rules {
        for e in &rule.exprs {
            match e {
                Expr::Jump(c) => f(Ref::Chain(c)),
                Expr::Verdict(v) => {
                    if let Some(c) = v.chain() {
                        f(Ref::Chain(c));
                    }
                }
                Expr::SetLookup { set, .. } => f(Ref::Set(set)),
                Expr::VmapLookup { map, .. } => f(Ref::Map(map)),
                Expr::Lookup { set, .. } => f(Ref::SetOrMap(set)),
                _ => {}
            }
        }
    }
}

/// Whether a base chain must be deleted and created again to become `b` (only the policy
/// can be changed in place).
fn must_recreate(a: &Option<BaseChain>, b: &Option<BaseChain>) -> bool {
    match (a, b) {
        (None, None) => false,
        (Some(a), Some(b)) => (a.kind, a.hook, a.priority) != (b.kind, b.hook, b.priority),
        _ => true,
    }
}

fn set_recreated(a: &Set, b: &Set) -> bool {
    a.key != b.key || a.interval != b.interval
}

fn map_recreated(a: &VerdictMap, b: &VerdictMap) -> bool {
    a.key != b.key
}

fn input(msg: String) -> NfError {
    NfError::Input(msg)
}

impl Planner<'_> {
    /// `add table; delete table; [add table]`: removes whatever is there, absent or not.
    fn replace_table(&mut self, family: Family, name: &str, create: bool) {
        let f = family.nfproto();
        let what = format!("table {} {name}", family.name());
        self.batch.push(
            format!("add {what} (to replace it)"),
            table_message(nft_cmd(libc::NFT_MSG_NEWTABLE), NLM_F_CREATE, f, name),
        );
        self.batch
            .push(format!("delete {what}"), nft::del_table(f, name));
        if create {
            self.batch.push(
                format!("add {what}"),
                table_message(nft_cmd(libc::NFT_MSG_NEWTABLE), NLM_F_CREATE, f, name),
            );
        }
    }

    /// The batch for `changes`, towards `new`; `old_has_chain` says whether a chain existed
    /// before (chains are named in errors and rewritten only if they did).
    pub(crate) fn incremental(
        &mut self,
        changes: Changes<'_>,
        new: &dyn View,
        old_has_chain: &dyn Fn(&str) -> bool,
    ) -> Result<(), NfError> {
        // Classify.
        let mut gone_chains = Vec::new();
        let mut recreated_chains = Vec::new();
        let mut new_chains = Vec::new();
        let mut rewrite: BTreeSet<&str> = BTreeSet::new();
        let mut policy_updates = Vec::new();
        for pair in &changes.chains {
            let name = pair.name;
            match (pair.old, pair.new) {
                (None, None) => {}
                (Some(_), None) => gone_chains.push(name),
                (None, Some(_)) => new_chains.push(name),
                (Some(a), Some(b)) => {
                    if must_recreate(&a, &b.base) {
                        recreated_chains.push(name);
                        continue;
                    }
                    if pair.rules_differ {
                        rewrite.insert(name);
                    }
                    if let (Some(x), Some(y)) = (&a, &b.base)
                        && x.policy != y.policy
                    {
                        policy_updates.push((name, y.policy));
                    }
                }
            }
        }
        let mut gone_sets = Vec::new();
        let mut new_sets = Vec::new();
        let mut kept_sets = Vec::new();
        for pair in &changes.sets {
            let pair = *pair;
            match pair {
                (_, None, None) => {}
                (name, Some(_), None) => gone_sets.push(name),
                (name, None, Some(s)) => new_sets.push((name, s)),
                (name, Some(a), Some(b)) => {
                    if set_recreated(a, b) {
                        gone_sets.push(name);
                        new_sets.push((name, b));
                    } else if a.elems != b.elems {
                        kept_sets.push((name, a, b));
                    }
                }
            }
        }
        let mut gone_maps = Vec::new();
        let mut new_maps = Vec::new();
        let mut kept_maps = Vec::new();
        for pair in &changes.maps {
            let pair = *pair;
            match pair {
                (_, None, None) => {}
                (name, Some(_), None) => gone_maps.push(name),
                (name, None, Some(m)) => new_maps.push((name, m)),
                (name, Some(a), Some(b)) => {
                    if map_recreated(a, b) {
                        gone_maps.push(name);
                        new_maps.push((name, b));
                    } else if a.elems != b.elems {
                        kept_maps.push((name, a, b));
                    }
                }
            }
        }

        // Unchanged chains that name what goes: a recreated set or map makes them rewritten
        // (flushed before it goes, written after it is back); anything else gone is an error.
        let something_goes = !(gone_chains.is_empty()
            && recreated_chains.is_empty()
            && gone_sets.is_empty()
            && gone_maps.is_empty());
        let mut affected: BTreeSet<String> = BTreeSet::new();
        if something_goes {
            new.each_ref(&mut |name, r| {
                let hit = match r {
                    Ref::Set(s) | Ref::Map(s) | Ref::SetOrMap(s) => {
                        gone_sets.contains(&s) || gone_maps.contains(&s)
                    }
                    Ref::Chain(c) => recreated_chains.contains(&c) || gone_chains.contains(&c),
                };
                // New and recreated chains are written whole anyway.
                if hit
                    && !rewrite.contains(name)
                    && !recreated_chains.contains(&name)
                    && !affected.contains(name)
                    && old_has_chain(name)
                {
                    affected.insert(name.to_string());
                }
            });
        }
        // Rewritten, and so checked below: a recreated set or map is named again once it is
        // back; a chain that is gone is reported.
        rewrite.extend(affected.iter().map(String::as_str));

        // Everything written must name only what the new ruleset has.
        for name in rewrite.iter().chain(&new_chains).chain(&recreated_chains) {
            check_refs(new, name, rules_of(new, name)?)?;
        }
        let check_all_map_elems = !(gone_chains.is_empty() && recreated_chains.is_empty());
        for (name, map) in new.maps() {
            let fresh = new_maps.iter().any(|(n, _)| n == name);
            let changed = kept_maps.iter().any(|(n, _, _)| n == name);
            if check_all_map_elems || fresh || changed {
                for (ifname, v) in &map.elems {
                    if let Some(c) = v.chain() {
                        check_chain_target(new, &format!("map {name} element {ifname}"), c)?;
                    }
                }
            }
        }

        // 1. Flush what changes or goes.
        for name in rewrite.iter().chain(&gone_chains).chain(&recreated_chains) {
            self.batch.push(
                format!("flush chain {name}"),
                nft::flush_chain(self.family, self.table, name),
            );
        }
        // 2. Map elements that go or change.
        for (name, a, b) in &kept_maps {
            // Deleted by key (a changed verdict is deleted, then added anew).
            let del: Vec<KernelElem> = a
                .elems
                .iter()
                .filter(|(k, v)| b.elems.get(*k) != Some(*v))
                .map(|(k, _)| elems::map_key(k))
                .collect();
            self.elems(false, name, "map", &del);
        }
        // 3. Sets and maps that go.
        let gone = gone_sets.iter().map(|n| ("set", n));
        for (kind, name) in gone.chain(gone_maps.iter().map(|n| ("map", n))) {
            self.batch.push(
                format!("delete {kind} {name}"),
                set_name_message(nft_cmd(libc::NFT_MSG_DELSET), self.family, self.table, name),
            );
        }
        // 4. Chains that go.
        for name in gone_chains.iter().chain(&recreated_chains) {
            self.batch.push(
                format!("delete chain {name}"),
                nft::del_chain(self.family, self.table, name),
            );
        }
        // 5. New sets, maps, chains; policies.
        for (name, set) in &new_sets {
            self.batch.push(
                format!("add set {name}"),
                new_set_message(self.family, self.table, name, Some(set)),
            );
        }
        for (name, _) in &new_maps {
            self.batch.push(
                format!("add map {name}"),
                new_set_message(self.family, self.table, name, None),
            );
        }
        for name in new_chains.iter().chain(&recreated_chains) {
            let base = new.chain(name).flatten();
            self.batch.push(
                format!("add chain {name}"),
                chain_message(self.family, self.table, name, base.as_ref(), true),
            );
        }
        for (name, policy) in &policy_updates {
            let base = new.chain(name).flatten();
            self.batch.push(
                format!("set policy {policy:?} of chain {name}"),
                chain_message(self.family, self.table, name, base.as_ref(), false),
            );
        }
        // 6. Elements: deletions first (a key an interval gave up may be taken by another).
        let mut adds = Vec::with_capacity(kept_sets.len());
        for (name, a, b) in &kept_sets {
            let (del, add) = elems::diff_elems(name, a, b)?;
            self.elems(false, name, "set", &del);
            adds.push((*name, add));
        }
        for (name, del, _) in &changes.set_elems {
            self.elems(false, name, "set", del);
        }
        for (name, add) in adds {
            self.elems(true, name, "set", &add);
        }
        for (name, _, add) in &changes.set_elems {
            self.elems(true, name, "set", add);
        }
        for (name, set) in &new_sets {
            let all = elems::all_elems(name, set)?;
            self.elems(true, name, "set", &all);
        }
        for (name, a, b) in &kept_maps {
            let add: Vec<KernelElem> = b
                .elems
                .iter()
                .filter(|(k, v)| a.elems.get(*k) != Some(*v))
                .map(|(k, v)| elems::map_elem(k, v))
                .collect();
            self.elems(true, name, "map", &add);
        }
        for (name, map) in &new_maps {
            let all: Vec<KernelElem> = map
                .elems
                .iter()
                .map(|(k, v)| elems::map_elem(k, v))
                .collect();
            self.elems(true, name, "map", &all);
        }
        // 7. Rules.
        let mut written: Vec<&str> = rewrite
            .iter()
            .copied()
            .chain(new_chains.iter().copied())
            .chain(recreated_chains.iter().copied())
            .collect();
        written.sort_unstable();
        written.dedup();
        for name in written {
            for (i, rule) in rules_of(new, name)?.iter().enumerate() {
                let what = match &rule.comment {
                    Some(c) => format!("add rule {i} of chain {name} ({c})"),
                    None => format!("add rule {i} of chain {name}"),
                };
                self.batch.push(
                    what,
                    nft::new_rule(
                        self.family,
                        self.table,
                        name,
                        &rule.exprs,
                        rule.comment.as_deref(),
                        false,
                    ),
                );
            }
        }
        Ok(())
    }

    fn elems(&mut self, add: bool, set: &str, kind: &str, elems: &[KernelElem]) {
        let verb = if add { "add" } else { "delete" };
        let batch = &mut self.batch;
        elems::elem_messages(add, self.family, self.table, set, elems, |m, n| {
            batch.push(format!("{verb} {n} elements of {kind} {set}"), m);
        });
    }
}

/// The rules of a chain to write: a chain the edit did not bring cannot be written from the
/// record (see [`ProgrammedTable`]).
fn rules_of<'a>(new: &'a dyn View, name: &str) -> Result<&'a [Rule], NfError> {
    new.rules(name).ok_or_else(|| {
        input(format!(
            "chain {name} must be written again, and only its fingerprint is kept: \
             replace the table whole"
        ))
    })
}

fn check_chain_target(new: &dyn View, who: &str, target: &str) -> Result<(), NfError> {
    match new.chain(target) {
        None => Err(input(format!(
            "{who} goes to chain {target}, which the table does not have"
        ))),
        Some(Some(_)) => Err(input(format!(
            "{who} goes to base chain {target} (only regular chains can be jumped to)"
        ))),
        Some(_) => Ok(()),
    }
}

fn check_refs(new: &dyn View, name: &str, rules: &[Rule]) -> Result<(), NfError> {
    let who = format!("chain {name}");
    let mut result = Ok(());
    refs_of(rules, |r| {
        if result.is_err() {
            return;
        }
        result = match r {
            Ref::Chain(c) => check_chain_target(new, &who, c),
            Ref::Set(s) if !new.has_set(s) => Err(input(format!(
                "{who} looks up set {s}, which the table does not have"
            ))),
            Ref::Map(m) if !new.has_map(m) => Err(input(format!(
                "{who} looks up map {m}, which the table does not have"
            ))),
            Ref::SetOrMap(s) if !new.has_set(s) && !new.has_map(s) => Err(input(format!(
                "{who} looks up {s}, which the table does not have"
            ))),
            _ => Ok(()),
        };
    });
    result
}

fn nft_cmd(cmd: libc::c_int) -> u8 {
    cmd as u8
}

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
/// `NFTNL_UDATA_SET_KEYBYTEORDER` = `BYTEORDER_HOST_ENDIAN`, as nft writes it for string keys.
const UDATA_KEY_HOST_ORDER: [u8; 6] = {
    let b = 1u32.to_ne_bytes();
    [0, 4, b[0], b[1], b[2], b[3]]
};
const NFTA_SET_DESC_CONCAT: u16 = 2;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_FIELD_LEN: u16 = 1;
const NFT_DATA_VERDICT: u32 = libc::NFT_DATA_VERDICT;
/// nft's `ifname` type (only `nft list` reads type numbers).
const TYPE_IFNAME: u32 = 41;
/// `sizeof(struct nft_verdict)`, what the kernel keeps for a verdict (it ignores the length
/// sent).
const VERDICT_LEN: u32 = 16;

fn table_message(cmd: u8, flags: u16, family: u8, name: &str) -> Message {
    let mut a = Attrs::new();
    a.str(NFTA_TABLE_NAME, name);
    Message::nft(cmd, flags, family, a)
}

/// Creates a chain (`create`: refused if it exists) or updates a base chain's policy.
fn chain_message(
    family: u8,
    table: &str,
    name: &str,
    base: Option<&BaseChain>,
    create: bool,
) -> Message {
    let mut a = Attrs::new();
    a.str(NFTA_CHAIN_TABLE, table).str(NFTA_CHAIN_NAME, name);
    if let Some(b) = base {
        if create {
            a.nest(NFTA_CHAIN_HOOK, |h| {
                // The priority is a signed 32-bit number sent as its bits.
                h.u32_be(NFTA_HOOK_HOOKNUM, b.hook.number())
                    .u32_be(NFTA_HOOK_PRIORITY, b.priority as u32);
            });
        }
        let policy = match b.policy {
            ChainPolicy::Accept => libc::NF_ACCEPT,
            ChainPolicy::Drop => libc::NF_DROP,
        };
        a.u32_be(NFTA_CHAIN_POLICY, policy as u32);
        if create {
            a.str(NFTA_CHAIN_TYPE, b.kind.name());
        }
    }
    let flags = if create { NLM_F_CREATE | NLM_F_EXCL } else { 0 };
    Message::nft(nft_cmd(libc::NFT_MSG_NEWCHAIN), flags, family, a)
}

fn set_name_message(cmd: u8, family: u8, table: &str, name: &str) -> Message {
    let mut a = Attrs::new();
    a.str(NFTA_SET_TABLE, table).str(NFTA_SET_NAME, name);
    Message::nft(cmd, 0, family, a)
}

/// Type numbers (for `nft list`) and field lengths of a set's key.
fn key_layout(key: SetKey) -> (u32, &'static [u32]) {
    use nft::types::*;
    match key {
        SetKey::Ipv4Addr => (IPV4_ADDR, &[4]),
        SetKey::Ipv6Addr => (IPV6_ADDR, &[16]),
        SetKey::Ipv4AddrProtoPort => (concat(&[IPV4_ADDR, INET_PROTO, INET_SERVICE]), &[4, 1, 2]),
        SetKey::Ipv6AddrProtoPort => (concat(&[IPV6_ADDR, INET_PROTO, INET_SERVICE]), &[16, 1, 2]),
        SetKey::Port => (INET_SERVICE, &[2]),
    }
}

/// Creates a set, or with `None` an `ifname : verdict` map.
fn new_set_message(family: u8, table: &str, name: &str, set: Option<&Set>) -> Message {
    let (key_type, fields): (u32, &[u32]) = match set {
        Some(s) => key_layout(s.key),
        None => (TYPE_IFNAME, &[nft::IFNAME_LEN as u32]),
    };
    // One field: its own length; a concatenation: each field padded to a register.
    let key_len: u32 = match fields {
        [one] => *one,
        _ => fields.iter().map(|l| l.div_ceil(4) * 4).sum(),
    };
    let mut flags = 0;
    if set.is_some_and(|s| s.interval) {
        flags |= nft::SET_INTERVAL;
    }
    if set.is_none() {
        flags |= nft::SET_MAP;
    }
    if fields.len() > 1 {
        flags |= nft::SET_CONCAT;
    }
    let mut a = Attrs::new();
    a.str(NFTA_SET_TABLE, table)
        .str(NFTA_SET_NAME, name)
        .u32_be(NFTA_SET_FLAGS, flags)
        .u32_be(NFTA_SET_KEY_TYPE, key_type)
        .u32_be(NFTA_SET_KEY_LEN, key_len);
    if set.is_none() {
        a.u32_be(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT)
            .u32_be(NFTA_SET_DATA_LEN, VERDICT_LEN);
        // Interface names are strings in host order: without saying so, `nft list` shows
        // the keys as empty strings (only it reads this).
        a.bytes(NFTA_SET_USERDATA, &UDATA_KEY_HOST_ORDER);
    }
    if fields.len() > 1 {
        a.nest(NFTA_SET_DESC, |d| {
            d.nest(NFTA_SET_DESC_CONCAT, |c| {
                for f in fields {
                    c.nest(NFTA_LIST_ELEM, |e| {
                        e.u32_be(NFTA_SET_FIELD_LEN, *f);
                    });
                }
            });
        });
    }
    a.u32_be(NFTA_SET_ID, nft::set_id(name));
    Message::nft(
        nft_cmd(libc::NFT_MSG_NEWSET),
        NLM_F_CREATE | NLM_F_EXCL,
        family,
        a,
    )
}

// What the kernel makes of these batches is tested in tests/ruleset.rs; here which messages a
// plan holds, in which order, and what it refuses.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::Verdict;
    use crate::ruleset::{ChainHook, ChainKind, Rule, SetElem};

    fn jump(chain: &str) -> Rule {
        Rule::new(vec![Expr::Verdict(Verdict::Jump(chain.into()))])
    }

    fn lookup(set: &str) -> Rule {
        Rule::new(nft::match_addr_set(true, true, set, false))
    }

    fn base() -> Chain {
        Chain {
            base: Some(BaseChain {
                kind: ChainKind::Filter,
                hook: ChainHook::Forward,
                priority: 0,
                policy: ChainPolicy::Accept,
            }),
            rules: vec![Rule::new(nft::ifname_vmap(false, "dispatch"))],
        }
    }

    fn regular(rules: Vec<Rule>) -> Chain {
        Chain { base: None, rules }
    }

    /// fwd → (map) → ep-a → pol-1 (names set s1).
    fn small() -> Ruleset {
        let mut rs = Ruleset::new("calico");
        rs.chains.insert("fwd".into(), base());
        rs.chains
            .insert("ep-a".into(), regular(vec![jump("pol-1")]));
        rs.chains
            .insert("pol-1".into(), regular(vec![lookup("s1")]));
        rs.sets.insert(
            "s1".into(),
            Set::nets(true, ["10.0.0.0/24".parse().expect("net")]),
        );
        let mut map = VerdictMap::default();
        map.elems
            .insert("calia".into(), Verdict::Goto("ep-a".into()));
        rs.maps.insert("dispatch".into(), map);
        rs
    }

    fn what(b: &Batch) -> Vec<&str> {
        b.descriptions().iter().map(String::as_str).collect()
    }

    #[test]
    fn a_replace_adds_deletes_and_creates_the_table_then_everything_in_order() {
        let b = plan(None, &small()).expect("plan");
        assert_eq!(
            what(&b),
            [
                "add table inet calico (to replace it)",
                "delete table inet calico",
                "add table inet calico",
                "add set s1",
                "add map dispatch",
                "add chain ep-a",
                "add chain fwd",
                "add chain pol-1",
                "add 2 elements of set s1",
                "add 1 elements of map dispatch",
                "add rule 0 of chain ep-a",
                "add rule 0 of chain fwd",
                "add rule 0 of chain pol-1",
            ]
        );
        // Table messages: create without EXCL (the first cannot fail), then delete.
        // (nlmsghdr: type at 4, flags at 6, the command in the type's low byte.)
        let msgs: Vec<&[u8]> = b.wire().messages().collect();
        let flags = u16::from_ne_bytes([msgs[0][6], msgs[0][7]]);
        assert_eq!(flags, NLM_F_CREATE | calico_netlink::packet::NLM_F_REQUEST);
        let ty = u16::from_ne_bytes([msgs[1][4], msgs[1][5]]);
        assert_eq!(ty & 0xff, libc::NFT_MSG_DELTABLE as u16);
        // Nothing changed: nothing sent.
        assert!(plan(Some(&small()), &small()).expect("plan").is_empty());
    }

    #[test]
    fn removals_go_after_their_references_and_additions_before_theirs() {
        let old = small();
        let mut new = old.clone();
        // pol-1 and s1 go; pol-2 and s2 come; ep-a now jumps to pol-2.
        new.chains.remove("pol-1");
        new.sets.remove("s1");
        new.chains
            .insert("pol-2".into(), regular(vec![lookup("s2")]));
        new.sets.insert(
            "s2".into(),
            Set::nets(true, ["10.1.0.0/16".parse().expect("net")]),
        );
        new.chains
            .insert("ep-a".into(), regular(vec![jump("pol-2")]));
        let b = plan(Some(&old), &new).expect("plan");
        assert_eq!(
            what(&b),
            [
                "flush chain ep-a",
                "flush chain pol-1",
                "delete set s1",
                "delete chain pol-1",
                "add set s2",
                "add chain pol-2",
                "add 2 elements of set s2",
                "add rule 0 of chain ep-a",
                "add rule 0 of chain pol-2",
            ]
        );
        // The map's target goes too: its element goes before the chain.
        let mut no_a = new.clone();
        no_a.chains.remove("ep-a");
        no_a.maps.get_mut("dispatch").expect("map").elems.clear();
        let b = plan(Some(&new), &no_a).expect("plan");
        assert_eq!(
            what(&b),
            [
                "flush chain ep-a",
                "delete 1 elements of map dispatch",
                "delete chain ep-a",
            ]
        );
    }

    #[test]
    fn a_recreated_set_rewrites_the_chains_that_name_it() {
        let old = small();
        let mut new = old.clone();
        new.sets.insert(
            "s1".into(),
            Set {
                key: SetKey::Ipv4Addr,
                interval: false,
                elems: [SetElem::Net("10.0.0.1/32".parse().expect("net"))].into(),
            },
        );
        let b = plan(Some(&old), &new).expect("plan");
        assert_eq!(
            what(&b),
            [
                "flush chain pol-1",
                "delete set s1",
                "add set s1",
                "add 1 elements of set s1",
                "add rule 0 of chain pol-1",
            ]
        );
    }

    /// A base chain moved to another priority that also names a recreated set: flushed,
    /// deleted, created and written once.
    #[test]
    fn a_recreated_chain_naming_a_recreated_set_is_written_once() {
        let mut old = small();
        old.chains
            .get_mut("fwd")
            .expect("fwd")
            .rules
            .push(lookup("s1"));
        let mut new = old.clone();
        new.chains
            .get_mut("fwd")
            .expect("fwd")
            .base
            .as_mut()
            .expect("base")
            .priority = 5;
        new.sets.get_mut("s1").expect("s1").interval = false;
        new.sets.get_mut("s1").expect("s1").elems =
            [SetElem::Net("10.0.0.1/32".parse().expect("net"))].into();
        let b = plan(Some(&old), &new).expect("plan");
        assert_eq!(
            what(&b),
            [
                "flush chain pol-1",
                "flush chain fwd",
                "delete set s1",
                "delete chain fwd",
                "add set s1",
                "add chain fwd",
                "add 1 elements of set s1",
                "add rule 0 of chain fwd",
                "add rule 1 of chain fwd",
                "add rule 0 of chain pol-1",
            ]
        );
    }

    #[test]
    fn dangling_names_are_refused_before_the_kernel() {
        let ok = small();
        let refuse = |rs: &Ruleset, needle: &str| {
            let e = plan(Some(&ok), rs).expect_err("refused").to_string();
            assert!(e.contains(needle), "{e}");
            let e = plan(None, rs).expect_err("refused").to_string();
            assert!(e.contains(needle), "{e}");
        };
        let mut missing_chain = ok.clone();
        missing_chain
            .chains
            .insert("ep-a".into(), regular(vec![jump("nope")]));
        refuse(&missing_chain, "chain ep-a goes to chain nope");
        let mut to_base = ok.clone();
        to_base
            .chains
            .insert("ep-a".into(), regular(vec![jump("fwd")]));
        refuse(&to_base, "base chain fwd");
        let mut missing_set = ok.clone();
        missing_set.sets.clear();
        refuse(&missing_set, "chain pol-1 looks up set s1");
        let mut missing_map = ok.clone();
        missing_map.maps.clear();
        refuse(&missing_map, "chain fwd looks up map dispatch");
        // A chain that goes while an unchanged map element still goes to it.
        let mut gone_target = ok.clone();
        gone_target.chains.remove("ep-a");
        refuse(
            &gone_target,
            "map dispatch element calia goes to chain ep-a",
        );
        // An element that does not fit its set.
        let mut bad_elem = ok.clone();
        bad_elem
            .sets
            .get_mut("s1")
            .expect("set")
            .elems
            .insert(SetElem::Ports(1, 2));
        refuse(&bad_elem, "set s1");
    }

    #[test]
    fn a_renamed_table_replaces_the_old_one() {
        let old = small();
        let mut new = old.clone();
        new.name = "calico2".into();
        let b = plan(Some(&old), &new).expect("plan");
        assert_eq!(
            &what(&b)[..5],
            [
                "add table inet calico (to replace it)",
                "delete table inet calico",
                "add table inet calico2 (to replace it)",
                "delete table inet calico2",
                "add table inet calico2",
            ]
        );
    }

    #[test]
    fn policy_changes_in_place_and_hooks_by_recreating() {
        let old = small();
        let mut new = old.clone();
        let fwd = new.chains.get_mut("fwd").expect("fwd");
        fwd.base.as_mut().expect("base").policy = ChainPolicy::Drop;
        assert_eq!(
            what(&plan(Some(&old), &new).expect("plan")),
            ["set policy Drop of chain fwd"]
        );
        let mut hooked = new.clone();
        let fwd = hooked.chains.get_mut("fwd").expect("fwd");
        fwd.base.as_mut().expect("base").hook = ChainHook::Input;
        assert_eq!(
            what(&plan(Some(&new), &hooked).expect("plan")),
            [
                "flush chain fwd",
                "delete chain fwd",
                "add chain fwd",
                "add rule 0 of chain fwd",
            ]
        );
    }

    #[test]
    fn thousands_of_elements_are_several_messages_in_one_batch() {
        let mut rs = Ruleset::new("calico");
        let nets = (0..20_000u32).map(|i| {
            let [_, _, a, b] = i.to_be_bytes();
            ipnet::IpNet::V4(
                ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(10, a, b, 0), 25).expect("net"),
            )
        });
        rs.sets.insert("big".into(), Set::nets(true, nets));
        let b = plan(None, &rs).expect("plan");
        let adds: Vec<&str> = what(&b)
            .into_iter()
            .filter(|w| w.contains("elements"))
            .collect();
        assert!(adds.len() > 1, "{adds:?}");
        let total: usize = adds
            .iter()
            .map(|w| {
                w.split(' ')
                    .nth(1)
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0)
            })
            .sum();
        assert_eq!(total, 40_000, "a start and an end element per /25");
    }
}
