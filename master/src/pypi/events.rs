//! What each PyPI changelog row means for the farm, and which rows say nothing new.
//!
//! The action texts that matter: `create` (a new project), `add <python> file <name>` (a file
//! was uploaded: a `source` file makes a release buildable, any other one is a binary upload),
//! `remove` / `remove project` / `remove release` (deletion: of a release when the row names a
//! version, else of the project), `yank release` and `unyank release`. Every other action
//! (ownership, documentation, `new release` before any file) is ignored.
//!
//! PyPI logs one row per uploaded file, so a release with ten wheels appears ten times;
//! [`Dedup`] passes on only the first sighting of a release, except that a source file after
//! binary-only uploads is passed on too (the release becomes buildable), with the time of the
//! first sighting.

use std::collections::{HashMap, VecDeque};

use super::xmlrpc::RawEvent;

/// What a changelog row asks of the farm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A new project.
    Create,
    /// A source distribution was added: the release can be built.
    Source,
    /// Only a binary distribution was added: the release is recorded but not built.
    Binary,
    /// A release (row with a version) or the whole project (no version) was removed.
    Remove,
    /// A release was yanked.
    Yank,
    /// A release was unyanked.
    Unyank,
}

/// What a row's action means, or None when it means nothing to the farm.
pub fn classify(action: &str) -> Option<EventKind> {
    if let Some(rest) = action.strip_prefix("add ") {
        let python = rest.split_whitespace().next()?;
        if !rest[python.len()..].trim_start().starts_with("file") {
            return None;
        }
        return Some(if python == "source" { EventKind::Source } else { EventKind::Binary });
    }
    match action {
        "create" => Some(EventKind::Create),
        "remove" | "remove project" | "remove release" => Some(EventKind::Remove),
        "yank release" => Some(EventKind::Yank),
        "unyank release" => Some(EventKind::Unyank),
        _ => None,
    }
}

/// A classified changelog row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The project name as PyPI spells it.
    pub name: String,
    /// The release (always None for `Create`).
    pub version: Option<String>,
    /// When (seconds since the epoch); for a promoted release, its first sighting.
    pub timestamp: i64,
    /// What happened.
    pub kind: EventKind,
    /// The row's serial.
    pub serial: i64,
}

/// Remembers recently seen releases to drop repeated upload rows.
#[derive(Debug, Clone)]
pub struct Dedup {
    capacity: usize,
    seen: HashMap<(String, String), (i64, EventKind)>,
    order: VecDeque<(String, String)>,
}

impl Dedup {
    /// A cache of the `capacity` most recently seen releases.
    pub fn new(capacity: usize) -> Dedup {
        Dedup { capacity: capacity.max(1), seen: HashMap::new(), order: VecDeque::new() }
    }

    /// The event a raw row means, if it means anything new.
    pub fn event(&mut self, raw: &RawEvent) -> Option<Event> {
        let kind = classify(&raw.action)?;
        let event = |version: Option<String>, timestamp, kind| Event { name: raw.name.clone(), version, timestamp, kind, serial: raw.serial };
        match (kind, &raw.version) {
            (EventKind::Create, _) => Some(event(None, raw.timestamp, kind)),
            (EventKind::Source | EventKind::Binary, Some(version)) => {
                let key = (raw.name.clone(), version.clone());
                match self.seen.get(&key).copied() {
                    None => {
                        self.remember(key, raw.timestamp, kind);
                        Some(event(Some(version.clone()), raw.timestamp, kind))
                    }
                    Some((first, EventKind::Binary)) if kind == EventKind::Source => {
                        self.remember(key, first, kind);
                        Some(event(Some(version.clone()), first, kind))
                    }
                    Some((first, old)) => {
                        self.remember(key, first, old);
                        None
                    }
                }
            }
            // An upload row without a version says nothing usable.
            (EventKind::Source | EventKind::Binary, None) => None,
            (EventKind::Remove, version) => {
                if let Some(version) = version {
                    self.forget(&(raw.name.clone(), version.clone()));
                }
                Some(event(version.clone(), raw.timestamp, kind))
            }
            (EventKind::Yank | EventKind::Unyank, Some(version)) => Some(event(Some(version.clone()), raw.timestamp, kind)),
            (EventKind::Yank | EventKind::Unyank, None) => None,
        }
    }

    fn remember(&mut self, key: (String, String), timestamp: i64, kind: EventKind) {
        if self.seen.insert(key.clone(), (timestamp, kind)).is_some() {
            self.order.retain(|k| *k != key);
        }
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
    }

    fn forget(&mut self, key: &(String, String)) {
        if self.seen.remove(key).is_some() {
            self.order.retain(|k| k != key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str, version: Option<&str>, timestamp: i64, action: &str, serial: i64) -> RawEvent {
        RawEvent { name: name.into(), version: version.map(Into::into), timestamp, action: action.into(), serial }
    }

    #[test]
    fn actions_are_classified() {
        assert_eq!(classify("create"), Some(EventKind::Create));
        assert_eq!(classify("add source file foo-1.0.tar.gz"), Some(EventKind::Source));
        assert_eq!(classify("add py2.py3 file foo-1.0-py2.py3-none-any.whl"), Some(EventKind::Binary));
        assert_eq!(classify("add cp311 file foo-1.0-cp311-cp311-linux_armv7l.whl"), Some(EventKind::Binary));
        for remove in ["remove", "remove project", "remove release"] {
            assert_eq!(classify(remove), Some(EventKind::Remove));
        }
        assert_eq!(classify("yank release"), Some(EventKind::Yank));
        assert_eq!(classify("unyank release"), Some(EventKind::Unyank));
        for ignored in ["new release", "remove Owner foo", "add Owner bar", "docdestroy", "add url", "", "add source"] {
            assert_eq!(classify(ignored), None, "{ignored:?}");
        }
    }

    #[test]
    fn repeated_uploads_pass_once_and_a_late_source_promotes_with_the_first_time() {
        let mut dedup = Dedup::new(10);
        let first = dedup.event(&raw("Foo", Some("1.0"), 100, "add cp311 file a.whl", 1)).unwrap();
        assert_eq!((first.kind, first.timestamp), (EventKind::Binary, 100));
        assert_eq!(dedup.event(&raw("Foo", Some("1.0"), 110, "add cp39 file b.whl", 2)), None);
        let source = dedup.event(&raw("Foo", Some("1.0"), 120, "add source file foo-1.0.tar.gz", 3)).unwrap();
        assert_eq!((source.kind, source.timestamp, source.serial), (EventKind::Source, 100, 3));
        assert_eq!(dedup.event(&raw("Foo", Some("1.0"), 130, "add source file foo-1.0.zip", 4)), None);
        // A binary after the source changes nothing.
        assert_eq!(dedup.event(&raw("Foo", Some("1.0"), 140, "add py3 file c.whl", 5)), None);
    }

    #[test]
    fn removal_is_of_a_release_or_of_the_project_and_forgets_the_release() {
        let mut dedup = Dedup::new(10);
        dedup.event(&raw("foo", Some("1.0"), 1, "add source file x", 1));
        let removed = dedup.event(&raw("foo", Some("1.0"), 2, "remove project", 2)).unwrap();
        assert_eq!((removed.kind, removed.version.as_deref()), (EventKind::Remove, Some("1.0")));
        // Uploaded again after removal: a fresh sighting.
        assert!(dedup.event(&raw("foo", Some("1.0"), 3, "add source file x", 3)).is_some());
        let project = dedup.event(&raw("foo", None, 4, "remove release", 4)).unwrap();
        assert_eq!((project.kind, project.version), (EventKind::Remove, None));
    }

    #[test]
    fn creation_drops_the_version_and_yanks_need_one() {
        let mut dedup = Dedup::new(10);
        let created = dedup.event(&raw("foo", Some("0.1"), 1, "create", 1)).unwrap();
        assert_eq!((created.kind, created.version), (EventKind::Create, None));
        assert_eq!(dedup.event(&raw("foo", None, 2, "yank release", 2)), None);
        assert_eq!(dedup.event(&raw("foo", Some("0.1"), 3, "unyank release", 3)).unwrap().kind, EventKind::Unyank);
    }

    #[test]
    fn the_cache_keeps_only_the_most_recent_releases() {
        let mut dedup = Dedup::new(2);
        for (i, v) in ["1", "2", "3"].iter().enumerate() {
            assert!(dedup.event(&raw("foo", Some(v), 1, "add py3 file x", i as i64)).is_some());
        }
        // "1" was evicted, so it passes again; "3" is still remembered.
        assert!(dedup.event(&raw("foo", Some("1"), 1, "add py3 file x", 9)).is_some());
        assert!(dedup.event(&raw("foo", Some("3"), 1, "add py3 file x", 10)).is_none());
    }
}
