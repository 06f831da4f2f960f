//! A desired nftables table as data, and the one transaction that turns
//! the last applied version into the next.
//!
//! Compilers build a `Table`; the applier keeps the last one it sent and
//! asks `diff_script` for the difference: new sets and chains, rewritten
//! chains, element additions and deletions, removals. At 10k Services that
//! is a handful of lines where a full script is 20k elements, and the nft
//! CLI's cost is almost all in parsing what it is sent (FACTS.md). A full
//! script replaces the whole table atomically (add, delete, re-add in one
//! transaction), so whatever an earlier agent left behind is gone and
//! established connections keep their conntrack NAT.

use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// `type nat hook prerouting priority -100; policy accept;` for a base
    /// chain, empty for a regular one.
    pub decl: String,
    pub rules: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: &'static str,
    pub name: String,
    /// Set or map name → its declaration body (`type …; flags …;`).
    pub sets: BTreeMap<String, String>,
    pub chains: BTreeMap<String, Chain>,
    /// Set or map name → key → value (empty for a plain set).
    pub elements: BTreeMap<String, BTreeMap<String, String>>,
}

impl Table {
    pub fn new(family: &'static str, name: &str) -> Table {
        Table {
            family,
            name: name.to_string(),
            sets: BTreeMap::new(),
            chains: BTreeMap::new(),
            elements: BTreeMap::new(),
        }
    }

    pub fn set(&mut self, name: &str, decl: &str) {
        self.sets.insert(name.to_string(), decl.to_string());
        self.elements.entry(name.to_string()).or_default();
    }

    pub fn chain(&mut self, name: &str, decl: &str) -> &mut Vec<String> {
        let c = self.chains.entry(name.to_string()).or_default();
        c.decl = decl.to_string();
        &mut c.rules
    }

    pub fn rule(&mut self, chain: &str, rule: impl Into<String>) {
        self.chains
            .entry(chain.to_string())
            .or_default()
            .rules
            .push(rule.into());
    }

    /// Adds an element; `value` is empty for a plain set.
    pub fn element(&mut self, set: &str, key: impl Into<String>, value: impl Into<String>) {
        self.elements
            .entry(set.to_string())
            .or_default()
            .insert(key.into(), value.into());
    }

    /// Adds everything in `other` (its sets, chains and elements) to this
    /// table; on a clash, `other` wins.
    pub fn merge(&mut self, other: &Table) {
        for (n, d) in &other.sets {
            self.sets.insert(n.clone(), d.clone());
        }
        for (n, c) in &other.chains {
            self.chains.insert(n.clone(), c.clone());
        }
        for (n, els) in &other.elements {
            let mine = self.elements.entry(n.clone()).or_default();
            for (k, v) in els {
                mine.insert(k.clone(), v.clone());
            }
        }
    }

    fn prefix(&self) -> String {
        format!("{} {}", self.family, self.name)
    }

    /// The script that replaces the table, whatever is in the kernel now.
    pub fn full_script(&self) -> String {
        let t = self.prefix();
        let mut s = format!("add table {t}\ndelete table {t}\nadd table {t}\n");
        for (n, d) in &self.sets {
            add_set(&mut s, &t, n, d);
        }
        for (n, c) in &self.chains {
            add_chain(&mut s, &t, n, c);
        }
        for (n, els) in &self.elements {
            add_elements(&mut s, &t, n, els.iter());
        }
        for (n, c) in &self.chains {
            for r in &c.rules {
                let _ = writeln!(s, "add rule {t} {n} {r}");
            }
        }
        s
    }

    /// The transaction that turns `prev` (what was last applied) into
    /// `self`, or `None` when they are the same. A changed declaration of a
    /// set or base chain is rare and falls back to the full script
    /// (`Diff::Whole`), which an applier may prefer to rebuild from its
    /// whole state.
    pub fn diff(&self, prev: &Table) -> Option<Diff> {
        if self == prev {
            return None;
        }
        let changed_decl = self
            .sets
            .iter()
            .any(|(n, d)| prev.sets.get(n).is_some_and(|p| p != d))
            || self
                .chains
                .iter()
                .any(|(n, c)| prev.chains.get(n).is_some_and(|p| p.decl != c.decl));
        if changed_decl || self.family != prev.family || self.name != prev.name {
            return Some(Diff::Whole(self.full_script()));
        }
        let t = self.prefix();
        let mut s = String::new();
        // 1. New sets and chains, empty.
        for (n, d) in self
            .sets
            .iter()
            .filter(|(n, _)| !prev.sets.contains_key(*n))
        {
            add_set(&mut s, &t, n, d);
        }
        for (n, c) in &self.chains {
            if !prev.chains.contains_key(n) {
                add_chain(&mut s, &t, n, c);
            }
        }
        // 2. Elements: deletions, then additions (a changed value is both).
        //    They come before rules so that a verdict map stops naming a
        //    chain before the chain goes, and names a new one after it
        //    exists.
        let empty = BTreeMap::new();
        for (n, els) in &prev.elements {
            if !self.sets.contains_key(n) {
                continue; // the whole set goes below
            }
            let next = self.elements.get(n).unwrap_or(&empty);
            let gone: Vec<&String> = els
                .iter()
                .filter(|(k, v)| next.get(*k) != Some(v))
                .map(|(k, _)| k)
                .collect();
            let keys: Vec<&str> = gone.iter().map(|k| k.as_str()).collect();
            for chunk in keys.chunks(ELEMENTS_PER_LINE) {
                let _ = writeln!(s, "delete element {t} {n} {{ {} }}", chunk.join(", "));
            }
        }
        for (n, els) in &self.elements {
            let before = prev.elements.get(n).unwrap_or(&empty);
            add_elements(
                &mut s,
                &t,
                n,
                els.iter().filter(|(k, v)| before.get(*k) != Some(v)),
            );
        }
        // 3. Rewritten and new chains get their rules.
        for (n, c) in &self.chains {
            match prev.chains.get(n) {
                Some(p) if p.rules == c.rules => {}
                Some(_) => {
                    let _ = writeln!(s, "flush chain {t} {n}");
                    for r in &c.rules {
                        let _ = writeln!(s, "add rule {t} {n} {r}");
                    }
                }
                None => {
                    for r in &c.rules {
                        let _ = writeln!(s, "add rule {t} {n} {r}");
                    }
                }
            }
        }
        // 4. Removals: empty every departing chain first (they may name
        //    each other), then delete chains, then the sets their rules
        //    used.
        let gone: Vec<&String> = prev
            .chains
            .keys()
            .filter(|n| !self.chains.contains_key(*n))
            .collect();
        for n in &gone {
            let _ = writeln!(s, "flush chain {t} {n}");
        }
        for n in &gone {
            let _ = writeln!(s, "delete chain {t} {n}");
        }
        for (n, d) in prev
            .sets
            .iter()
            .filter(|(n, _)| !self.sets.contains_key(*n))
        {
            let _ = writeln!(s, "delete {} {t} {n}", set_kind(d));
        }
        Some(Diff::Delta(s))
    }

    /// `diff` as a script, whichever kind it is.
    pub fn diff_script(&self, prev: &Table) -> Option<String> {
        self.diff(prev).map(Diff::into_script)
    }
}

/// What `Table::diff` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diff {
    /// A declaration changed: the table is replaced whole.
    Whole(String),
    /// Only what changed.
    Delta(String),
}

impl Diff {
    pub fn into_script(self) -> String {
        match self {
            Diff::Whole(s) | Diff::Delta(s) => s,
        }
    }
}

/// A declaration with a data type (`key : data`) is a map.
fn set_kind(decl: &str) -> &'static str {
    if decl.contains(" : ") {
        "map"
    } else {
        "set"
    }
}

fn add_set(s: &mut String, t: &str, n: &str, decl: &str) {
    let _ = writeln!(s, "add {} {t} {n} {{ {decl} }}", set_kind(decl));
}

fn add_chain(s: &mut String, t: &str, n: &str, c: &Chain) {
    if c.decl.is_empty() {
        let _ = writeln!(s, "add chain {t} {n}");
    } else {
        let _ = writeln!(s, "add chain {t} {n} {{ {} }}", c.decl);
    }
}

fn add_elements<'a>(
    s: &mut String,
    t: &str,
    n: &str,
    els: impl Iterator<Item = (&'a String, &'a String)>,
) {
    let items: Vec<String> = els
        .map(|(k, v)| {
            if v.is_empty() {
                k.clone()
            } else {
                format!("{k} : {v}")
            }
        })
        .collect();
    // nft's scanner rejects very long lines (a 10k-Service map on one line
    // fails), so elements go in chunks.
    for chunk in items.chunks(ELEMENTS_PER_LINE) {
        let _ = writeln!(s, "add element {t} {n} {{ {} }}", chunk.join(", "));
    }
}

const ELEMENTS_PER_LINE: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Table {
        let mut t = Table::new("inet", "x");
        t.set("m", "type ipv4_addr : verdict;");
        t.chain(
            "pre",
            "type nat hook prerouting priority -100; policy accept;",
        );
        t.rule("pre", "ip daddr vmap @m");
        t.chain("a", "");
        t.rule("a", "accept");
        t.element("m", "10.0.0.1", "goto a");
        t
    }

    #[test]
    fn unchanged_is_nothing() {
        assert_eq!(base().diff_script(&base()), None);
    }

    #[test]
    fn full_replaces_the_table_atomically() {
        let s = base().full_script();
        assert!(s.starts_with("add table inet x\ndelete table inet x\nadd table inet x\n"));
        // Chains exist before the elements that name them.
        assert!(s.find("add chain inet x a").unwrap() < s.find("add element").unwrap());
    }

    #[test]
    fn element_changes_are_deletions_then_additions() {
        let mut n = base();
        n.element("m", "10.0.0.2", "goto a");
        n.element("m", "10.0.0.1", "drop");
        let s = n.diff_script(&base()).unwrap();
        assert_eq!(
            s,
            "delete element inet x m { 10.0.0.1 }\nadd element inet x m { 10.0.0.1 : drop, 10.0.0.2 : goto a }\n"
        );
    }

    #[test]
    fn a_chain_goes_after_the_elements_naming_it() {
        let mut n = base();
        n.chains.remove("a");
        n.elements.get_mut("m").unwrap().clear();
        let s = n.diff_script(&base()).unwrap();
        let del_el = s.find("delete element").unwrap();
        let del_chain = s.find("delete chain inet x a").unwrap();
        assert!(del_el < del_chain, "{s}");
        assert!(s.contains("flush chain inet x a\n"));
    }

    #[test]
    fn a_new_chain_exists_before_it_is_named() {
        let mut n = base();
        n.chain("b", "");
        n.rule("b", "drop");
        n.element("m", "10.0.0.3", "goto b");
        let s = n.diff_script(&base()).unwrap();
        assert!(s.find("add chain inet x b").unwrap() < s.find("add element").unwrap());
        assert!(s.contains("add rule inet x b drop"));
    }

    #[test]
    fn a_changed_base_chain_falls_back_to_full() {
        let mut n = base();
        n.chain(
            "pre",
            "type nat hook prerouting priority -90; policy accept;",
        );
        assert!(matches!(n.diff(&base()), Some(Diff::Whole(s)) if s.contains("delete table")));
    }
}
