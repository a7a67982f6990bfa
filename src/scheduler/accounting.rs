//! What every node has bound, kept up to date change by change instead of recounted from
//! every cached pod for each binding (which made a burst of n pods cost O(n²)).
//!
//! A pod counts against a node while it is not terminal and either names the node
//! (`spec.node_name`) or is assumed to it (bound by this scheduler, the store's echo not seen
//! yet). [`Accounting`] remembers, per pod, the last version it was told about and what that
//! version holds, so a change only moves that pod's share: [`Accounting::observe`] for a new
//! version, [`Accounting::forget`] for a pod gone, [`Accounting::assume`] and
//! [`Accounting::unassume`] for the scheduler's own choices. A version older than the one
//! remembered is ignored, so a change that arrives after a newer read of the cache cannot
//! move the count back.

use std::collections::HashMap;

use super::Usage;
use crate::api::{Pod, PodPhase};

/// One pod, as last observed: what it asks for and where it is bound.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    resource_version: i64,
    /// `spec.node_name` (empty: not bound).
    node: String,
    terminal: bool,
    /// Pending with no node: the scheduler's to bind (and the only pods it assumes).
    unbound_pending: bool,
    cpu: u64,
    memory: u64,
}

impl Held {
    fn of(pod: &Pod) -> Held {
        Held {
            resource_version: pod.resource_version,
            node: pod.spec.node_name.clone(),
            terminal: pod.is_terminal(),
            unbound_pending: pod.spec.node_name.is_empty() && pod.status == PodPhase::Pending,
            cpu: pod.spec.resources.cpu,
            memory: pod.spec.resources.memory,
        }
    }
}

/// Per-node usage from the pods seen and the bindings assumed.
#[derive(Debug, Default)]
pub struct Accounting {
    pods: HashMap<String, Held>,
    /// Pods bound by us that the cache may not show yet: pod → node.
    assumed: HashMap<String, String>,
    nodes: HashMap<String, Usage>,
}

impl Accounting {
    /// What every node has bound (nodes with nothing may be missing).
    pub fn usage(&self) -> &HashMap<String, Usage> {
        &self.nodes
    }

    pub fn is_assumed(&self, key: &str) -> bool {
        self.assumed.contains_key(key)
    }

    /// A version of `pod` (from the watch or the cache). Older than the one already seen:
    /// ignored. Bound, or no longer pending: any assumption about it is settled.
    pub fn observe(&mut self, pod: &Pod) {
        let key = pod.key();
        if self
            .pods
            .get(&key)
            .is_some_and(|h| h.resource_version > pod.resource_version)
        {
            return;
        }
        let held = Held::of(pod);
        self.change(&key, |acc| {
            if !held.unbound_pending {
                acc.assumed.remove(&key);
            }
            acc.pods.insert(key.clone(), held);
        });
    }

    /// `key` is gone (deleted at `resource_version`); an older deletion than the version
    /// seen (a pod of the same name made again) is ignored.
    pub fn forget(&mut self, key: &str, resource_version: i64) {
        if self
            .pods
            .get(key)
            .is_some_and(|h| h.resource_version > resource_version)
        {
            return;
        }
        self.change(key, |acc| {
            acc.pods.remove(key);
            acc.assumed.remove(key);
        });
    }

    /// This scheduler bound `pod` to `node` (the store's echo not seen yet).
    pub fn assume(&mut self, pod: &Pod, node: &str) {
        self.observe(pod);
        let key = pod.key();
        self.change(&key, |acc| {
            acc.assumed.insert(key.clone(), node.to_string());
        });
    }

    /// The binding of `key` did not happen.
    pub fn unassume(&mut self, key: &str) {
        self.change(key, |acc| {
            acc.assumed.remove(key);
        });
    }

    /// The node `key` counts against now, and what it takes there.
    fn share(&self, key: &str) -> Option<(&str, u64, u64)> {
        let held = self.pods.get(key)?;
        if held.terminal {
            return None;
        }
        let node = if !held.node.is_empty() {
            held.node.as_str()
        } else {
            self.assumed.get(key)?.as_str()
        };
        Some((node, held.cpu, held.memory))
    }

    /// Applies `f` to what is known of `key`, moving its share from where it counted to
    /// where it counts now.
    fn change(&mut self, key: &str, f: impl FnOnce(&mut Self)) {
        if let Some((node, cpu, memory)) = self.share(key) {
            let node = node.to_string();
            let emptied = self.nodes.get_mut(&node).is_some_and(|u| {
                u.pods = u.pods.saturating_sub(1);
                u.cpu = u.cpu.saturating_sub(cpu);
                u.memory = u.memory.saturating_sub(memory);
                *u == Usage::default()
            });
            if emptied {
                self.nodes.remove(&node);
            }
        }
        f(self);
        if let Some((node, cpu, memory)) = self.share(key) {
            let u = self.nodes.entry(node.to_string()).or_default();
            u.pods += 1;
            u.cpu += cpu;
            u.memory += memory;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, rv: i64, node: &str, cpu: u64) -> Pod {
        let mut p = crate::controllers::replicaset::new_pod(&crate::api::ReplicaSet {
            name: "r".into(),
            ..Default::default()
        });
        p.namespace = "default".into();
        p.resource_version = rv;
        p.spec.name = name.into();
        p.spec.node_name = node.into();
        p.spec.resources.cpu = cpu;
        p.spec.resources.memory = 10;
        p
    }

    fn usage(pods: u32, cpu: u64, memory: u64) -> Usage {
        Usage { pods, cpu, memory }
    }

    /// The reference: recount every pod, as the scheduler did before.
    fn recount(
        pods: &HashMap<String, Pod>,
        assumed: &HashMap<String, String>,
    ) -> HashMap<String, Usage> {
        let mut out: HashMap<String, Usage> = HashMap::new();
        for (key, p) in pods {
            if p.is_terminal() {
                continue;
            }
            let node = if !p.spec.node_name.is_empty() {
                &p.spec.node_name
            } else if let Some(n) = assumed.get(key) {
                n
            } else {
                continue;
            };
            let u = out.entry(node.clone()).or_default();
            u.pods += 1;
            u.cpu += p.spec.resources.cpu;
            u.memory += p.spec.resources.memory;
        }
        out
    }

    #[test]
    fn an_assumed_pod_counts_once_when_its_binding_comes_back() {
        let mut acc = Accounting::default();
        let p = pod("a", 5, "", 100);
        acc.observe(&p);
        assert!(acc.usage().is_empty());
        acc.assume(&p, "n1");
        assert_eq!(acc.usage().get("n1"), Some(&usage(1, 100, 10)));
        // The store's echo of the binding.
        acc.observe(&pod("a", 6, "n1", 100));
        assert!(!acc.is_assumed("default/a"));
        assert_eq!(acc.usage().get("n1"), Some(&usage(1, 100, 10)));
    }

    #[test]
    fn a_failed_binding_gives_the_room_back() {
        let mut acc = Accounting::default();
        let p = pod("a", 5, "", 100);
        acc.assume(&p, "n1");
        acc.unassume("default/a");
        assert!(acc.usage().is_empty());
        assert!(!acc.is_assumed("default/a"));
    }

    #[test]
    fn terminal_and_deleted_pods_free_their_node() {
        let mut acc = Accounting::default();
        acc.observe(&pod("a", 5, "n1", 100));
        acc.observe(&pod("b", 6, "n1", 200));
        assert_eq!(acc.usage().get("n1"), Some(&usage(2, 300, 20)));
        let mut done = pod("a", 7, "n1", 100);
        done.status = PodPhase::Succeeded;
        acc.observe(&done);
        assert_eq!(acc.usage().get("n1"), Some(&usage(1, 200, 10)));
        acc.forget("default/b", 8);
        assert!(acc.usage().is_empty());
    }

    #[test]
    fn an_older_version_does_not_move_the_count_back() {
        let mut acc = Accounting::default();
        // The cache (newer) is read first, then the watch delivers the older creation.
        acc.observe(&pod("a", 9, "n1", 100));
        acc.observe(&pod("a", 5, "", 100));
        assert_eq!(acc.usage().get("n1"), Some(&usage(1, 100, 10)));
        // A deletion older than the version seen is another pod of the same name.
        acc.forget("default/a", 7);
        assert_eq!(acc.usage().get("n1"), Some(&usage(1, 100, 10)));
    }

    #[test]
    fn a_pod_bound_elsewhere_than_assumed_counts_where_it_is() {
        let mut acc = Accounting::default();
        let p = pod("a", 5, "", 100);
        acc.assume(&p, "n1");
        acc.observe(&pod("a", 6, "n2", 100));
        assert_eq!(acc.usage().get("n1"), None);
        assert_eq!(acc.usage().get("n2"), Some(&usage(1, 100, 10)));
    }

    /// Any sequence of observations, assumptions and deletions leaves the same usage as
    /// recounting the latest version of every pod.
    #[test]
    fn matches_a_full_recount_over_a_random_history() {
        // A fixed linear congruential sequence: the same history every run.
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % n
        };
        let mut acc = Accounting::default();
        let mut latest: HashMap<String, Pod> = HashMap::new();
        let mut assumed: HashMap<String, String> = HashMap::new();
        let mut rv = 0;
        for _ in 0..5000 {
            rv += 1;
            let name = format!("p{}", next(40));
            let key = format!("default/{name}");
            match next(6) {
                0 | 1 => {
                    let node = if next(2) == 0 {
                        String::new()
                    } else {
                        format!("n{}", next(5))
                    };
                    let mut p = pod(&name, rv, &node, 10 * next(10));
                    if next(8) == 0 {
                        p.status = PodPhase::Failed;
                    }
                    acc.observe(&p);
                    if !(p.spec.node_name.is_empty() && p.status == PodPhase::Pending) {
                        assumed.remove(&key);
                    }
                    latest.insert(key, p);
                }
                2 => {
                    if let Some(p) = latest.get(&key) {
                        if p.spec.node_name.is_empty() && p.status == PodPhase::Pending {
                            let node = format!("n{}", next(5));
                            acc.assume(p, &node);
                            assumed.insert(key, node);
                        }
                    }
                }
                3 => {
                    acc.unassume(&key);
                    assumed.remove(&key);
                }
                4 => {
                    acc.forget(&key, rv);
                    latest.remove(&key);
                    assumed.remove(&key);
                }
                _ => {
                    // A stale delivery: an older version than the latest.
                    if let Some(p) = latest.get(&key) {
                        let mut old = p.clone();
                        old.resource_version -= 1;
                        old.spec.node_name = "stale".into();
                        acc.observe(&old);
                    }
                }
            }
            assert_eq!(acc.usage(), &recount(&latest, &assumed));
        }
    }
}
