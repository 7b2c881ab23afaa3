//! Environment drift: builders of one ABI that build with different tools. Every builder says
//! in its hello what it builds with (`SlaveHello::environment`); builders of one ABI should
//! agree, or the same release could build differently depending on which one took it.
//!
//! For each ABI and each entry, the reference is the value most of its hosts have (a host is a
//! label without its builder's `#N`: the builders of one `piw-slave` count once; on a tie, the
//! value of the builder connected longest); a builder with another value, or without the
//! entry, has drifted on that entry. The kernel is left out: Raspberry Pi models run different
//! kernels, and a build does not depend on it. The Debian packages are compared but do not
//! hold a builder's work (`--hold-drifted`): a tool installed on one host changes the digest
//! without changing its builds.

use std::collections::{BTreeMap, BTreeSet};

use piwheels_common::protocols::{SlaveHello, SlaveId};

/// Entries not compared.
const NOT_COMPARED: &[&str] = &["kernel"];

/// Entries compared and announced that do not hold a builder's work.
const NOT_HELD: &[&str] = &["debian-packages"];

/// What a builder without an entry has.
const MISSING: &str = "nothing";

/// One entry on which some builders of an ABI differ from the others.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Drift {
    /// The ABI.
    pub abi: String,
    /// The entry (`setuptools`, `debian-packages`, ...).
    pub entry: String,
    /// The value most hosts have.
    pub reference: String,
    /// How many hosts have it.
    pub agreeing: usize,
    /// The builders that differ, by id: their label and value.
    pub drifted: BTreeMap<SlaveId, (String, String)>,
}

impl Drift {
    /// The sentence for the public home page: the values and how many builders have each,
    /// naming no builder.
    pub fn public(&self) -> String {
        let mut others: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (label, value) in self.drifted.values() {
            others.entry(value.as_str()).or_default().insert(host(label));
        }
        let hosts = |n: usize| if n == 1 { "1 host".to_string() } else { format!("{n} hosts") };
        let mut counts: Vec<String> = vec![format!("{} with {}", hosts(self.agreeing), self.reference)];
        counts.extend(others.iter().map(|(value, labels)| format!("{} with {value}", hosts(labels.len()))));
        format!("{} builders differ in {}: {}", self.abi, self.entry, counts.join(", "))
    }

    /// What the announcement is about: the entry, the values and the hosts that differ,
    /// whichever of their builders are connected (a drifted builder connecting again is no
    /// news; another host drifting is).
    pub fn subject(&self) -> (&str, &str, &str, BTreeSet<(&str, &str)>) {
        (&self.abi, &self.entry, &self.reference, self.drifted.values().map(|(label, value)| (host(label), value.as_str())).collect())
    }

    /// Whether the difference holds a drifted builder's work under `--hold-drifted`.
    pub fn holds(&self) -> bool {
        !NOT_HELD.contains(&self.entry.as_str())
    }

    /// The notice for operators, naming the entry and both values.
    pub fn describe(&self) -> String {
        let mut hosts: BTreeMap<&str, &str> = BTreeMap::new();
        for (label, value) in self.drifted.values() {
            hosts.insert(host(label), value);
        }
        let others: Vec<String> = hosts.iter().map(|(label, value)| format!("{label} has {value}")).collect();
        let agreeing = match self.agreeing {
            1 => "the other has".to_string(),
            n => format!("the other {n} have"),
        };
        format!("{} builders differ in {}: {}; {agreeing} {}", self.abi, self.entry, others.join(", "), self.reference)
    }
}

/// The drifts among `builders` (id, hello), ordered by ABI and entry.
pub fn find<'a>(builders: impl IntoIterator<Item = (SlaveId, &'a SlaveHello)>) -> Vec<Drift> {
    let mut by_abi: BTreeMap<&str, Vec<(SlaveId, &SlaveHello)>> = BTreeMap::new();
    for (id, hello) in builders {
        by_abi.entry(hello.abi.as_str()).or_default().push((id, hello));
    }
    let mut drifts = Vec::new();
    for (abi, mut peers) in by_abi {
        // Ids grow with each connection: the first is the one connected longest.
        peers.sort_by_key(|(id, _)| *id);
        let entries: BTreeSet<&str> = peers.iter().flat_map(|(_, hello)| hello.environment.keys().map(String::as_str)).collect();
        for entry in entries.into_iter().filter(|entry| !NOT_COMPARED.contains(entry)) {
            let value = |hello: &'a SlaveHello| hello.environment.get(entry).map_or(MISSING, String::as_str);
            // Each value with the hosts that have it, in the order first seen.
            let mut counts: Vec<(&str, BTreeSet<&str>)> = Vec::new();
            for (_, hello) in &peers {
                match counts.iter_mut().find(|(v, _)| *v == value(hello)) {
                    Some((_, hosts)) => {
                        hosts.insert(host(&hello.host.label));
                    }
                    None => counts.push((value(hello), BTreeSet::from([host(&hello.host.label)]))),
                }
            }
            let counts: Vec<(&str, usize)> = counts.into_iter().map(|(value, hosts)| (value, hosts.len())).collect();
            if counts.len() < 2 {
                continue;
            }
            // The most common value; among equals, the first seen (the longest connected's).
            let (reference, agreeing) = counts.iter().copied().fold(counts[0], |best, next| if next.1 > best.1 { next } else { best });
            let drifted = peers
                .iter()
                .filter(|(_, hello)| value(hello) != reference)
                .map(|(id, hello)| (*id, (hello.host.label.clone(), value(hello).to_string())))
                .collect();
            drifts.push(Drift { abi: abi.to_string(), entry: entry.to_string(), reference: reference.to_string(), agreeing, drifted });
        }
    }
    drifts
}

/// The host of a builder: its label without the `#N` of its number (the builders of one
/// `piw-slave` share a machine and what it builds with).
pub fn host(label: &str) -> &str {
    match label.rsplit_once('#') {
        Some((host, number)) if !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()) => host,
        _ => label,
    }
}

/// The builders that drifted on an entry that holds work, with those entries.
pub fn held(drifts: &[Drift]) -> BTreeMap<SlaveId, Vec<&str>> {
    let mut builders: BTreeMap<SlaveId, Vec<&str>> = BTreeMap::new();
    for drift in drifts.iter().filter(|drift| drift.holds()) {
        for id in drift.drifted.keys() {
            builders.entry(*id).or_default().push(drift.entry.as_str());
        }
    }
    builders
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(label: &str, abi: &str, entries: &[(&str, &str)]) -> SlaveHello {
        let mut hello = piwheels_testsupport::data::slave_hello(label);
        hello.abi = abi.into();
        hello.environment = entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        hello
    }

    #[test]
    fn builders_that_agree_have_no_drift_whatever_their_kernels() {
        let a = hello("a", "cp311", &[("setuptools", "68.1.2"), ("kernel", "6.6.31-v8")]);
        let b = hello("b", "cp311", &[("setuptools", "68.1.2"), ("kernel", "6.6.31-2712")]);
        // Another ABI may differ: it builds other wheels.
        let c = hello("c", "cp313", &[("setuptools", "75.0.0")]);
        assert_eq!(find([(1, &a), (2, &b), (3, &c)]), Vec::new());
    }

    #[test]
    fn the_odd_one_out_is_named_with_both_values() {
        let a = hello("pi4-a", "cp311", &[("setuptools", "68.1.2"), ("pip", "23.0")]);
        let b = hello("pi4-b", "cp311", &[("setuptools", "68.1.2"), ("pip", "23.0")]);
        let c = hello("pi5-a", "cp311", &[("setuptools", "69.0.0"), ("pip", "23.0")]);
        let drifts = find([(1, &a), (2, &b), (3, &c)]);
        assert_eq!(drifts.len(), 1, "{drifts:?}");
        assert_eq!(drifts[0].describe(), "cp311 builders differ in setuptools: pi5-a has 69.0.0; the other 2 have 68.1.2");
        assert_eq!(held(&drifts), BTreeMap::from([(3, vec!["setuptools"])]));
        assert_eq!(drifts[0].public(), "cp311 builders differ in setuptools: 2 hosts with 68.1.2, 1 host with 69.0.0");
    }

    #[test]
    fn on_a_tie_the_builder_connected_longest_sets_the_reference_and_a_missing_entry_differs() {
        let old = hello("old", "cp311", &[("setuptools", "68.1.2"), ("cc", "gcc 12")]);
        let new = hello("new", "cp311", &[("setuptools", "69.0.0")]);
        let drifts = find([(9, &new), (4, &old)]);
        let described: Vec<String> = drifts.iter().map(Drift::describe).collect();
        assert_eq!(described, ["cp311 builders differ in cc: new has nothing; the other has gcc 12", "cp311 builders differ in setuptools: new has 69.0.0; the other has 68.1.2"]);
        assert_eq!(held(&drifts), BTreeMap::from([(9, vec!["cc", "setuptools"])]));
    }

    #[test]
    fn a_host_counts_once_whatever_its_builders_and_its_packages_do_not_hold_work() {
        fn env<'a>(setuptools: &'a str, packages: &'a str) -> [(&'a str, &'a str); 2] {
            [("setuptools", setuptools), ("debian-packages", packages)]
        }
        // One stale host of four builders against two good hosts of one.
        let stale: Vec<SlaveHello> = (1..=4).map(|n| hello(&format!("old#{n}"), "cp311", &env("60.0", "10 packages, sha256:aa"))).collect();
        let good_a = hello("good-a#1", "cp311", &env("68.1.2", "10 packages, sha256:bb"));
        let good_b = hello("good-b#1", "cp311", &env("68.1.2", "10 packages, sha256:bb"));
        let builders = stale.iter().enumerate().map(|(i, h)| (i as SlaveId + 1, h)).chain([(10, &good_a), (11, &good_b)]);
        let drifts = find(builders);
        let described: Vec<String> = drifts.iter().map(Drift::describe).collect();
        assert_eq!(
            described,
            [
                "cp311 builders differ in debian-packages: old has 10 packages, sha256:aa; the other 2 have 10 packages, sha256:bb",
                "cp311 builders differ in setuptools: old has 60.0; the other 2 have 68.1.2",
            ]
        );
        assert_eq!(drifts[1].public(), "cp311 builders differ in setuptools: 2 hosts with 68.1.2, 1 host with 60.0");
        // All four of the stale host's builders are held, for setuptools only.
        assert_eq!(held(&drifts), (1..=4).map(|id| (id, vec!["setuptools"])).collect());
        assert_eq!(host("pi#x"), "pi#x");
    }
}
