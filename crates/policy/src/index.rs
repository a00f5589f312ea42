//! A label index: which selectors match which labelled items, kept up to date in both
//! directions (Felix's `felix/labelindex`, `InheritIndex` and `SelectorAndNamedPortIndex`).
//!
//! An item change evaluates only the selectors that could match it, a selector change only
//! the items that could match it: each selector is filed under a "cover", pairs of which
//! every item it matches has one (`k == 'v'`: that pair; `k in {a, b}`: one pair per value;
//! `a || b`: the union of both sides' covers; `a && b`: the rarer of both sides' covers),
//! and each item under all its pairs (ties, as on a cold start before any item, go to a
//! pod's own label rather than Calico's `projectcalico.org/*`, `pcns.*` and `pcsa.*` labels,
//! which whole namespaces share); the rest (`has(k)`, `!`, `all()`, or an `||` with such a
//! side) are evaluated against everything. With
//! Labels are stored as shared strings ([`Interner`], [`LabelSet`]): keys and values repeat
//! across thousands of endpoints. With Kubernetes' scoped selectors (`… && projectcalico.org/namespace == 'ns'`) this keeps an
//! update to the size of a namespace, not of the cluster.

use calico_netfilter::ruleset::sorted_difference;
use calico_selector::Selector;
use std::collections::BTreeMap;

/// The calculation's maps and sets: keyed by small ids and interned strings, hashed with
/// foldhash (seeded per process) rather than SipHash, whose hashing was a fifth of reading
/// the cold start's 12,000 objects into the engine.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
use std::hash::Hash;
use std::sync::Arc;

/// Whether a label key is one whole namespaces share (Calico's own labels, namespace and
/// service-account labels): the last choice for filing a selector.
fn broad_key(k: &str) -> bool {
    k.starts_with("projectcalico.org/") || k.starts_with("pcns.") || k.starts_with("pcsa.")
}

/// Labels as read from objects.
pub type Labels = BTreeMap<String, String>;

/// Shared strings: label keys and values repeat across thousands of endpoints, so each is
/// stored once.
#[derive(Default)]
pub struct Interner {
    strings: FastSet<Arc<str>>,
}

impl Interner {
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strings.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.strings.insert(a.clone());
        a
    }

    /// Forgets strings nothing else holds any more.
    pub fn sweep(&mut self) {
        self.strings.retain(|a| Arc::strong_count(a) > 1);
    }

    pub fn len(&self) -> usize {
        self.strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }
}

/// An item's labels, compact: sorted pairs of shared strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSet(Box<[(Arc<str>, Arc<str>)]>);

impl LabelSet {
    /// From pairs (a later duplicate key is ignored), its strings shared through `strings`.
    pub fn new<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        strings: &mut Interner,
    ) -> Self {
        let mut v: Vec<(Arc<str>, Arc<str>)> = Vec::new();
        for (k, val) in pairs {
            if v.iter().any(|(have, _)| &**have == k) {
                continue;
            }
            v.push((strings.get(k), strings.get(val)));
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        LabelSet(v.into_boxed_slice())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }
}

impl calico_selector::Labels for LabelSet {
    fn label(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }
}

/// A small sorted set of ids: what each selector matches, what matches each item, the
/// items with each label. A cluster has tens of thousands of them, most of a few to a
/// hundred ids, where a hash set's buckets and control bytes take twice the room of the ids
/// (and a sorted list makes the order of everything derived from it fixed).
#[derive(Debug, Clone)]
struct IdList<T>(Vec<T>);

impl<T> Default for IdList<T> {
    fn default() -> Self {
        IdList(Vec::new())
    }
}

impl<T: Ord> IdList<T> {
    /// Adds `t`; whether it was not there. Ids mostly come in order (a cold start numbers
    /// items as it reads them): appending is checked first.
    fn insert(&mut self, t: T) -> bool {
        if self.0.last().is_none_or(|l| *l < t) {
            self.0.push(t);
            return true;
        }
        match self.0.binary_search(&t) {
            Ok(_) => false,
            Err(i) => {
                self.0.insert(i, t);
                true
            }
        }
    }

    fn remove(&mut self, t: &T) -> bool {
        match self.0.binary_search(t) {
            Ok(i) => {
                self.0.remove(i);
                // A list that shrank to a quarter of its room gives half back.
                if self.0.capacity() > 8 && self.0.len() * 4 < self.0.capacity() {
                    self.0.shrink_to(self.0.len() * 2);
                }
                true
            }
            Err(_) => false,
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }
}

impl<'a, T> IntoIterator for &'a IdList<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

struct SelectorEntry {
    sel: Selector,
    /// The pairs it is filed under (its cover); none: evaluated against every item.
    filed: Vec<(String, String)>,
}

/// Selectors `S` over items `I`.
pub struct LabelIndex<I, S> {
    items: FastMap<I, LabelSet>,
    /// key → value → items with that label.
    items_by_pair: FastMap<Arc<str>, FastMap<Arc<str>, IdList<I>>>,
    selectors: FastMap<S, SelectorEntry>,
    selectors_by_pair: FastMap<String, FastMap<String, FastSet<S>>>,
    unfiled: FastSet<S>,
    matches: FastMap<S, IdList<I>>,
    matched_by: FastMap<I, IdList<S>>,
}

impl<I, S> Default for LabelIndex<I, S> {
    fn default() -> Self {
        LabelIndex {
            items: FastMap::default(),
            items_by_pair: FastMap::default(),
            selectors: FastMap::default(),
            selectors_by_pair: FastMap::default(),
            unfiled: FastSet::default(),
            matches: FastMap::default(),
            matched_by: FastMap::default(),
        }
    }
}

/// The covers a selector offers: sets of `k == 'v'` pairs such that every item it matches
/// has at least one pair of the set (an `&&` offers each side's; the caller picks one).
fn covers(sel: &Selector) -> Vec<Vec<(&str, &str)>> {
    match sel {
        Selector::Eq(k, v) => vec![vec![(k.as_str(), v.as_str())]],
        Selector::In(k, vals) if !vals.is_empty() => {
            vec![vals.iter().map(|v| (k.as_str(), v.as_str())).collect()]
        }
        Selector::And(list) => list.iter().flat_map(covers).collect(),
        Selector::Or(list) => {
            // Every side must be covered; each side's first cover will do (the union of
            // the alternatives' best would need the counts: rarely worth it).
            let mut union = Vec::new();
            for side in list {
                match covers(side).into_iter().next() {
                    Some(c) => union.extend(c),
                    None => return Vec::new(),
                }
            }
            union.sort_unstable();
            union.dedup();
            vec![union]
        }
        _ => Vec::new(),
    }
}

impl<I: Clone + Ord + Hash, S: Clone + Ord + Hash> LabelIndex<I, S> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives back the room the lists grew into and no longer use (after a cold start,
    /// which grows them one id at a time).
    pub fn shrink_to_fit(&mut self) {
        for lists in self.items_by_pair.values_mut() {
            for l in lists.values_mut() {
                l.0.shrink_to_fit();
            }
        }
        for l in self.matches.values_mut() {
            l.0.shrink_to_fit();
        }
        for l in self.matched_by.values_mut() {
            l.0.shrink_to_fit();
        }
    }

    pub fn labels(&self, item: &I) -> Option<&LabelSet> {
        self.items.get(item)
    }

    /// The items a selector matches now.
    pub fn matches(&self, sel: &S) -> impl Iterator<Item = &I> {
        self.matches.get(sel).into_iter().flatten()
    }

    pub fn match_count(&self, sel: &S) -> usize {
        self.matches.get(sel).map_or(0, IdList::len)
    }

    /// The selectors matching an item now.
    pub fn matched_by(&self, item: &I) -> impl Iterator<Item = &S> {
        self.matched_by.get(item).into_iter().flatten()
    }

    pub fn has_selector(&self, sel: &S) -> bool {
        self.selectors.contains_key(sel)
    }

    fn pair_count(&self, k: &str, v: &str) -> usize {
        self.items_by_pair
            .get(k)
            .and_then(|vals| vals.get(v))
            .map_or(0, IdList::len)
    }

    fn link(&mut self, s: &S, i: &I) {
        self.matches.entry(s.clone()).or_default().insert(i.clone());
        self.matched_by
            .entry(i.clone())
            .or_default()
            .insert(s.clone());
    }

    fn unlink(&mut self, s: &S, i: &I) {
        if let Some(m) = self.matches.get_mut(s) {
            m.remove(i);
            if m.is_empty() {
                self.matches.remove(s);
            }
        }
        if let Some(m) = self.matched_by.get_mut(i) {
            m.remove(s);
            if m.is_empty() {
                self.matched_by.remove(i);
            }
        }
    }

    /// Drops `s` from what `i` matches (the other side, `matches[s]`, is the caller's).
    fn unlink_item_side(&mut self, i: &I, s: &S) {
        if let Some(m) = self.matched_by.get_mut(i) {
            m.remove(s);
            if m.is_empty() {
                self.matched_by.remove(i);
            }
        }
    }

    fn file_pair(&mut self, k: &Arc<str>, v: &Arc<str>, id: &I) {
        self.items_by_pair
            .entry(k.clone())
            .or_default()
            .entry(v.clone())
            .or_default()
            .insert(id.clone());
    }

    fn unfile_pair(&mut self, k: &str, v: &str, id: &I) {
        if let Some(vals) = self.items_by_pair.get_mut(k) {
            if let Some(set) = vals.get_mut(v) {
                set.remove(id);
                if set.is_empty() {
                    vals.remove(v);
                }
            }
            if vals.is_empty() {
                self.items_by_pair.remove(k);
            }
        }
    }

    fn unfile_item(&mut self, id: &I, labels: &LabelSet) {
        for (k, v) in labels.0.iter() {
            self.unfile_pair(k, v, id);
        }
    }

    /// Adds or replaces an item; returns the selectors that started (`true`) or stopped
    /// (`false`) matching it.
    pub fn upsert_item(&mut self, id: I, labels: LabelSet) -> Vec<(S, bool)> {
        if self.items.get(&id) == Some(&labels) {
            return Vec::new();
        }
        // Only the pairs that changed are refiled: a pair whole namespaces share lists
        // thousands of items, and its list is a sorted vector.
        let old = self.items.remove(&id).unwrap_or_default();
        for (k, v) in old.0.iter() {
            if !labels.0.iter().any(|(a, b)| a == k && b == v) {
                self.unfile_pair(k, v, &id);
            }
        }
        for (k, v) in labels.0.iter() {
            if !old.0.iter().any(|(a, b)| a == k && b == v) {
                self.file_pair(k, v, &id);
            }
        }
        let mut now: FastSet<S> = FastSet::default();
        let mut consider = |s: &S| {
            // A selector filed under two of the item's pairs comes twice.
            if !now.contains(s)
                && let Some(e) = self.selectors.get(s)
                && e.sel.matches(&labels)
            {
                now.insert(s.clone());
            }
        };
        for s in &self.unfiled {
            consider(s);
        }
        for (k, v) in labels.iter() {
            if let Some(sels) = self.selectors_by_pair.get(k).and_then(|vals| vals.get(v)) {
                for s in sels {
                    consider(s);
                }
            }
        }
        self.items.insert(id.clone(), labels);
        let mut now: Vec<S> = now.into_iter().collect();
        now.sort_unstable();
        let before: &[S] = self.matched_by.get(&id).map_or(&[], |m| &m.0);
        let (gone, came) = sorted_difference(before, &now);
        let mut changes = Vec::with_capacity(gone.len() + came.len());
        for s in gone {
            self.unlink(&s, &id);
            changes.push((s, false));
        }
        for s in came {
            self.link(&s, &id);
            changes.push((s, true));
        }
        changes
    }

    /// Removes an item; returns the selectors that matched it.
    pub fn remove_item(&mut self, id: &I) -> Vec<S> {
        let Some(old) = self.items.remove(id) else {
            return Vec::new();
        };
        self.unfile_item(id, &old);
        let before: Vec<S> = self
            .matched_by
            .get(id)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default();
        for s in &before {
            self.unlink(s, id);
        }
        before
    }

    /// Adds or replaces a selector; returns the items that started (`true`) or stopped
    /// (`false`) matching it.
    pub fn upsert_selector(&mut self, id: S, sel: Selector) -> Vec<(I, bool)> {
        if self.selectors.get(&id).is_some_and(|e| e.sel == sel) {
            return Vec::new();
        }
        self.unfile(&id);
        let filed: Vec<(String, String)> = covers(&sel)
            .into_iter()
            // Before items arrive (a cold start, where the datastore lists policies before
            // endpoints) counts say nothing: a pod's own label (`app == 'x'`) is the best
            // guess of a rare pair; Calico's own labels (the namespace, the orchestrator, a
            // service account) and namespace labels are shared by whole namespaces. Filing
            // 2,000 policies of one namespace under that namespace made every endpoint of it
            // evaluate all of them (a 5 s cold start at the scale).
            .min_by_key(|cover| {
                let items: usize = cover.iter().map(|(k, v)| self.pair_count(k, v)).sum();
                let broad = cover.iter().filter(|(k, _)| broad_key(k)).count();
                (items, broad, cover.len())
            })
            .map(|cover| {
                cover
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let mut now: Vec<I> = if filed.is_empty() {
            self.items
                .iter()
                .filter(|(_, l)| sel.matches(*l))
                .map(|(i, _)| i.clone())
                .collect()
        } else {
            filed
                .iter()
                .filter_map(|(k, v)| {
                    self.items_by_pair
                        .get(k.as_str())
                        .and_then(|vals| vals.get(v.as_str()))
                })
                .flatten()
                .filter(|i| self.items.get(*i).is_some_and(|l| sel.matches(l)))
                .cloned()
                .collect()
        };
        if filed.is_empty() {
            self.unfiled.insert(id.clone());
        }
        for (k, v) in &filed {
            self.selectors_by_pair
                .entry(k.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .insert(id.clone());
        }
        self.selectors
            .insert(id.clone(), SelectorEntry { sel, filed });
        // An item filed under two of the cover's pairs comes twice.
        now.sort_unstable();
        now.dedup();
        // The selector's list is replaced whole; each item's side is updated.
        let before: Vec<I> = self.matches.remove(&id).map(|m| m.0).unwrap_or_default();
        let (gone, came) = sorted_difference(&before, &now);
        if !now.is_empty() {
            self.matches.insert(id.clone(), IdList(now));
        }
        let mut changes = Vec::with_capacity(gone.len() + came.len());
        for i in gone {
            self.unlink_item_side(&i, &id);
            changes.push((i, false));
        }
        for i in came {
            self.matched_by
                .entry(i.clone())
                .or_default()
                .insert(id.clone());
            changes.push((i, true));
        }
        changes
    }

    fn unfile(&mut self, id: &S) {
        if let Some(e) = self.selectors.remove(id) {
            if e.filed.is_empty() {
                self.unfiled.remove(id);
            }
            for (k, v) in e.filed {
                if let Some(vals) = self.selectors_by_pair.get_mut(&k) {
                    if let Some(set) = vals.get_mut(&v) {
                        set.remove(id);
                        if set.is_empty() {
                            vals.remove(&v);
                        }
                    }
                    if vals.is_empty() {
                        self.selectors_by_pair.remove(&k);
                    }
                }
            }
        }
    }

    /// Removes a selector; returns the items it matched.
    pub fn remove_selector(&mut self, id: &S) -> Vec<I> {
        self.unfile(id);
        // The selector's list goes whole (not id by id from its front: quadratic).
        let before: Vec<I> = self.matches.remove(id).map(|m| m.0).unwrap_or_default();
        for i in &before {
            self.unlink_item_side(i, id);
        }
        before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> LabelSet {
        LabelSet::new(pairs.iter().copied(), &mut Interner::default())
    }

    fn sorted<T: Ord + Clone>(it: impl Iterator<Item = T>) -> Vec<T> {
        let mut v: Vec<T> = it.collect();
        v.sort();
        v
    }

    /// Whatever the order of item and selector updates, the matches are those of a fresh
    /// evaluation (mirrors labelindex's contract in felix/labelindex/label_inheritance_index.go).
    #[test]
    fn matches_do_not_depend_on_update_order() {
        let items = [
            ("a", labels(&[("app", "web"), ("ns", "x")])),
            ("b", labels(&[("app", "db"), ("ns", "x")])),
            ("c", labels(&[("app", "web"), ("ns", "y")])),
        ];
        let sels = [
            ("web-x", "app == 'web' && ns == 'x'"),
            ("has-app", "has(app)"),
            ("not-db", "app != 'db'"),
            ("y", "ns == 'y'"),
            ("web-or-y", "app == 'web' || ns == 'y'"),
            ("in-db", "app in {'db', 'cache'}"),
            ("scoped-or", "(app == 'db' || ns == 'y') && ns == 'x'"),
            ("or-has", "app == 'db' || has(ns)"),
        ];
        let expect = |idx: &LabelIndex<&str, &str>| {
            for (s, text) in sels {
                let sel = Selector::parse(text).expect("selector");
                let want = sorted(
                    items
                        .iter()
                        .filter(|(_, l)| sel.matches(l))
                        .map(|(i, _)| *i),
                );
                assert_eq!(sorted(idx.matches(&s).copied()), want, "{s}");
            }
        };
        let mut one = LabelIndex::new();
        for (i, l) in &items {
            one.upsert_item(*i, l.clone());
        }
        for (s, t) in sels {
            one.upsert_selector(s, Selector::parse(t).expect("selector"));
        }
        expect(&one);
        // Only the selectors without a cover are evaluated against every item.
        let unfiled: Vec<&str> = sorted(one.unfiled.iter().copied());
        assert_eq!(unfiled, ["has-app", "not-db", "or-has"]);
        let mut two = LabelIndex::new();
        for (s, t) in sels {
            two.upsert_selector(s, Selector::parse(t).expect("selector"));
        }
        // Items first with wrong labels, then corrected.
        for (i, _) in &items {
            two.upsert_item(*i, labels(&[("app", "db")]));
        }
        for (i, l) in items.iter().rev() {
            let changes = two.upsert_item(*i, l.clone());
            assert!(
                changes
                    .iter()
                    .all(|(s, _)| sels.iter().any(|(n, _)| n == s))
            );
        }
        expect(&two);
        // Removing and re-adding a selector and an item.
        assert_eq!(sorted(two.remove_selector(&"web-x").into_iter()), ["a"]);
        assert_eq!(two.match_count(&"web-x"), 0);
        two.upsert_selector(
            "web-x",
            Selector::parse("app == 'web' && ns == 'x'").expect("s"),
        );
        let gone = sorted(two.remove_item(&"c").into_iter());
        assert_eq!(gone, ["has-app", "not-db", "or-has", "web-or-y", "y"]);
        two.upsert_item("c", items[2].1.clone());
        expect(&two);
    }
}
