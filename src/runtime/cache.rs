//! The cache of one kind of object, and the pure rule that keeps it: [`Cache::apply`] takes
//! what the watcher learned and returns the [`Change`]s it made, as kube-runtime's reflector
//! store does. No I/O, no locks, no tasks: the informer holds it under a lock and fans the
//! changes out.

use std::collections::BTreeMap;

use super::watcher::WatcherEvent;
use crate::registry::{Object, WatchEvent};

/// One change to the cache.
#[derive(Debug, Clone)]
pub enum Change<T> {
    /// Created or changed (`old` is what the cache held before, if anything).
    Upsert {
        old: Option<T>,
        new: T,
    },
    Deleted(T),
}

impl<T: Object> Change<T> {
    /// The changed object's key (`namespace/name`, or `name`).
    pub fn key(&self) -> String {
        match self {
            Change::Upsert { new, .. } => new.key(),
            Change::Deleted(o) => o.key(),
        }
    }
}

/// Every object of one kind by key, and the store revision they reflect.
#[derive(Debug, Clone)]
pub struct Cache<T> {
    objects: BTreeMap<String, T>,
    revision: i64,
    /// Whether a first list has arrived.
    listed: bool,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            objects: BTreeMap::new(),
            revision: 0,
            listed: false,
        }
    }
}

impl<T: Object> Cache<T> {
    pub fn get(&self, key: &str) -> Option<&T> {
        self.objects.get(key)
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.objects.values()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The store revision the cache reflects.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Whether a first list has filled the cache.
    pub fn is_listed(&self) -> bool {
        self.listed
    }

    /// Applies what the watcher learned; returns the changes it made, in order. A list
    /// replaces the cache and reports only the difference (objects gone, new or changed), so
    /// a relist after a compaction reports exactly what was missed.
    pub fn apply(&mut self, event: WatcherEvent<T>) -> Vec<Change<T>> {
        match event {
            WatcherEvent::Listed { objects, revision } => self.replace(objects, revision),
            WatcherEvent::Changed(event) => self.change(event).into_iter().collect(),
        }
    }

    fn replace(&mut self, objects: Vec<T>, revision: i64) -> Vec<Change<T>> {
        let fresh: BTreeMap<String, T> = objects.into_iter().map(|o| (o.key(), o)).collect();
        let mut changes: Vec<Change<T>> = self
            .objects
            .iter()
            .filter(|(key, _)| !fresh.contains_key(*key))
            .map(|(_, old)| Change::Deleted(old.clone()))
            .collect();
        for (key, new) in &fresh {
            let old = self.objects.get(key);
            if old.map(|o| o.resource_version()) != Some(new.resource_version()) {
                changes.push(Change::Upsert {
                    old: old.cloned(),
                    new: new.clone(),
                });
            }
        }
        self.objects = fresh;
        self.revision = revision;
        self.listed = true;
        changes
    }

    fn change(&mut self, event: WatchEvent<T>) -> Option<Change<T>> {
        let revision = event.revision();
        let change = match event {
            WatchEvent::Added(new) | WatchEvent::Modified(new) => {
                let old = self.objects.insert(new.key(), new.clone());
                Some(Change::Upsert { old, new })
            }
            WatchEvent::Deleted(gone) => {
                self.objects.remove(&gone.key());
                Some(Change::Deleted(gone))
            }
            WatchEvent::Bookmark(_) => None,
        };
        self.revision = self.revision.max(revision);
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NodeLease;

    fn lease(name: &str, rv: i64) -> NodeLease {
        NodeLease {
            name: name.into(),
            lease_id: 1,
            ttl_seconds: 15,
            renew_seconds: 5,
            resource_version: rv,
        }
    }

    fn listed(objects: Vec<NodeLease>, revision: i64) -> WatcherEvent<NodeLease> {
        WatcherEvent::Listed { objects, revision }
    }

    fn keys(changes: &[Change<NodeLease>]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Upsert { old: None, new } => format!("+{}", new.name),
                Change::Upsert { old: Some(_), new } => format!("~{}", new.name),
                Change::Deleted(o) => format!("-{}", o.name),
            })
            .collect()
    }

    #[test]
    fn a_first_list_adds_everything_and_marks_the_cache_listed() {
        let mut cache = Cache::default();
        assert!(!cache.is_listed());
        let changes = cache.apply(listed(vec![lease("a", 3), lease("b", 5)], 7));
        assert_eq!(keys(&changes), ["+a", "+b"]);
        assert!(cache.is_listed());
        assert_eq!(cache.revision(), 7);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_relist_reports_only_the_difference() {
        let mut cache = Cache::default();
        cache.apply(listed(vec![lease("a", 3), lease("b", 5), lease("c", 6)], 7));
        // b unchanged, a changed, c gone, d new.
        let changes = cache.apply(listed(
            vec![lease("a", 9), lease("b", 5), lease("d", 8)],
            10,
        ));
        assert_eq!(keys(&changes), ["-c", "~a", "+d"]);
        assert_eq!(cache.revision(), 10);
        assert!(cache.get("c").is_none());
        assert_eq!(cache.get("a").map(|l| l.resource_version), Some(9));
    }

    #[test]
    fn watch_events_update_the_cache_and_its_revision() {
        let mut cache = Cache::default();
        cache.apply(listed(vec![lease("a", 3)], 4));
        let added = cache.apply(WatcherEvent::Changed(WatchEvent::Added(lease("b", 5))));
        assert_eq!(keys(&added), ["+b"]);
        let modified = cache.apply(WatcherEvent::Changed(WatchEvent::Modified(lease("a", 6))));
        match &modified[..] {
            [Change::Upsert {
                old: Some(old),
                new,
            }] => {
                assert_eq!((old.resource_version, new.resource_version), (3, 6));
            }
            other => panic!("expected one modification, got {other:?}"),
        }
        let deleted = cache.apply(WatcherEvent::Changed(WatchEvent::Deleted(lease("b", 7))));
        assert_eq!(keys(&deleted), ["-b"]);
        assert_eq!(cache.revision(), 7);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_bookmark_moves_the_revision_and_changes_nothing() {
        let mut cache = Cache::default();
        cache.apply(listed(vec![lease("a", 3)], 4));
        assert!(cache
            .apply(WatcherEvent::Changed(WatchEvent::Bookmark(20)))
            .is_empty());
        assert_eq!(cache.revision(), 20);
        // An older bookmark does not move it back.
        cache.apply(WatcherEvent::Changed(WatchEvent::Bookmark(10)));
        assert_eq!(cache.revision(), 20);
    }
}
