//! The page buffer: rewrite requests waiting for their window to pass, at most one per package.
//!
//! A package's first request opens its window; requests for it within the window are folded
//! into that one (the scope widening from `Project` to `Both` if any asks for it), and the
//! pages are written once, when the window has passed or, with a batch taken then for another
//! package, up to half a window earlier. So a burst of events about one package (a release
//! with many files, an import) costs one rewrite, and nothing waits longer than the window. The buffer is only memory: the database's `rewrites_pending` table holds the
//! same entries, so that a crash loses none.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use piwheels_common::protocols::Timestamp;

use crate::calls::db::RewriteScope;

/// A package waiting for its pages to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The package.
    pub package: String,
    /// What to rewrite.
    pub scope: RewriteScope,
    /// When its first request arrived (wall clock, as the database records it).
    pub added_at: Timestamp,
    /// When to write it.
    pub due: Instant,
}

/// The waiting packages.
#[derive(Debug, Default)]
pub struct RewriteBuffer {
    waiting: HashMap<String, Waiting>,
}

/// The wider of two scopes.
pub fn widest(a: RewriteScope, b: RewriteScope) -> RewriteScope {
    if a == RewriteScope::Both || b == RewriteScope::Both { RewriteScope::Both } else { RewriteScope::Project }
}

impl RewriteBuffer {
    /// An empty buffer.
    pub fn new() -> RewriteBuffer {
        RewriteBuffer::default()
    }

    /// Adds a request that arrived at `now` (`added_at` on the wall clock) to be written
    /// `window` later, or folds it into the one waiting for the package. True when the
    /// package was not waiting yet.
    pub fn add(&mut self, package: &str, scope: RewriteScope, added_at: Timestamp, now: Instant, window: Duration) -> bool {
        match self.waiting.get_mut(package) {
            Some(w) => {
                w.scope = widest(w.scope, scope);
                w.added_at = w.added_at.min(added_at);
                false
            }
            None => {
                let entry = Waiting { package: package.to_string(), scope, added_at, due: now + window };
                self.waiting.insert(package.to_string(), entry);
                true
            }
        }
    }

    /// Puts back an entry whose write failed, to be tried again at `due` (merged with any
    /// request that arrived meanwhile).
    pub fn retry(&mut self, entry: Waiting, due: Instant) {
        match self.waiting.get_mut(&entry.package) {
            Some(w) => {
                w.scope = widest(w.scope, entry.scope);
                w.added_at = w.added_at.min(entry.added_at);
                w.due = w.due.min(due);
            }
            None => {
                self.waiting.insert(entry.package.clone(), Waiting { due, ..entry });
            }
        }
    }

    /// Takes the entries due at `now`, oldest first, at most `limit` of them; when there are
    /// any, those due within `ahead` of `now` come along, so that packages whose requests
    /// arrive one after another share a batch instead of one each.
    pub fn take_due(&mut self, now: Instant, ahead: Duration, limit: usize) -> Vec<Waiting> {
        if self.next_due().is_none_or(|due| due > now) {
            return Vec::new();
        }
        let until = now + ahead;
        let mut due: Vec<(Instant, Timestamp, String)> = self
            .waiting
            .values()
            .filter(|w| w.due <= until)
            .map(|w| (w.due, w.added_at, w.package.clone()))
            .collect();
        due.sort();
        due.truncate(limit);
        due.into_iter().filter_map(|(_, _, package)| self.waiting.remove(&package)).collect()
    }

    /// Forgets a package's entry (its pages are being dealt with otherwise).
    pub fn remove(&mut self, package: &str) -> Option<Waiting> {
        self.waiting.remove(package)
    }

    /// When the next entry falls due.
    pub fn next_due(&self) -> Option<Instant> {
        self.waiting.values().map(|w| w.due).min()
    }

    /// How many packages wait.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn at(s: i64) -> Timestamp {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn requests_within_the_window_fold_into_one_with_the_widest_scope() {
        let mut buffer = RewriteBuffer::new();
        let t0 = Instant::now();
        let window = Duration::from_secs(2);
        assert!(buffer.add("foo", RewriteScope::Project, at(0), t0, window));
        assert!(!buffer.add("foo", RewriteScope::Both, at(1), t0 + Duration::from_secs(1), window));
        assert!(!buffer.add("foo", RewriteScope::Project, at(1), t0 + Duration::from_millis(1500), window));
        assert!(buffer.add("bar", RewriteScope::Project, at(1), t0 + Duration::from_secs(1), window));
        assert_eq!(buffer.next_due(), Some(t0 + window));
        assert!(buffer.take_due(t0 + Duration::from_millis(1999), Duration::ZERO, 10).is_empty());
        let due = buffer.take_due(t0 + window, Duration::ZERO, 10);
        assert_eq!(due, [Waiting { package: "foo".into(), scope: RewriteScope::Both, added_at: at(0), due: t0 + window }]);
        assert_eq!(buffer.len(), 1);
        assert_eq!(buffer.take_due(t0 + Duration::from_secs(3), Duration::ZERO, 10)[0].package, "bar");
        assert!(buffer.is_empty());
    }

    #[test]
    fn due_entries_come_oldest_first_and_in_batches() {
        let mut buffer = RewriteBuffer::new();
        let t0 = Instant::now();
        for (n, name) in ["c", "a", "b"].into_iter().enumerate() {
            buffer.add(name, RewriteScope::Both, at(n as i64), t0 + Duration::from_millis(n as u64), Duration::ZERO);
        }
        let later = t0 + Duration::from_secs(1);
        let first: Vec<String> = buffer.take_due(later, Duration::ZERO, 2).into_iter().map(|w| w.package).collect();
        assert_eq!(first, ["c", "a"]);
        assert_eq!(buffer.take_due(later, Duration::ZERO, 2)[0].package, "b");
    }

    #[test]
    fn entries_due_soon_join_a_due_one_but_never_make_a_batch_alone() {
        let mut buffer = RewriteBuffer::new();
        let t0 = Instant::now();
        let window = Duration::from_secs(1);
        for (n, name) in ["a", "b", "c"].into_iter().enumerate() {
            buffer.add(name, RewriteScope::Both, at(n as i64), t0 + Duration::from_millis(400 * n as u64), window);
        }
        let ahead = Duration::from_millis(500);
        assert!(buffer.take_due(t0 + Duration::from_millis(999), ahead, 10).is_empty());
        let batch: Vec<String> = buffer.take_due(t0 + window, ahead, 10).into_iter().map(|w| w.package).collect();
        assert_eq!(batch, ["a", "b"], "c is due 800 ms later, past the 500 ms ahead");
        assert_eq!(buffer.next_due(), Some(t0 + Duration::from_millis(1800)));
    }

    #[test]
    fn a_failed_write_comes_back_merged_with_newer_requests() {
        let mut buffer = RewriteBuffer::new();
        let t0 = Instant::now();
        buffer.add("foo", RewriteScope::Both, at(0), t0, Duration::ZERO);
        let entry = buffer.take_due(t0, Duration::ZERO, 1).pop().unwrap();
        buffer.add("foo", RewriteScope::Project, at(5), t0, Duration::from_secs(1));
        buffer.retry(entry, t0 + Duration::from_secs(10));
        let again = buffer.remove("foo").unwrap();
        assert_eq!((again.scope, again.added_at, again.due), (RewriteScope::Both, at(0), t0 + Duration::from_secs(1)));
    }
}
