//! The linearizability checker: is there an order of the recorded operations, consistent
//! with real time, in which a register-with-compare-and-swap gives every recorded answer?
//!
//! Wing & Gong's search with Lowe's memoisation (the algorithm of Porcupine and Knossos),
//! per key (linearizability is compositional, so keys are checked apart). Operations that
//! definitely failed are left out; reads with unknown outcome constrain nothing and are left
//! out; writes with unknown outcome may take effect at any time after their invocation, or
//! never, so they get no return event and need not be linearized for a history to pass.
//! Owns nothing but the search; it never touches the network.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::history::{Op, Operation, Outcome};

/// Past this many search steps for one key, the key is reported undecided, not passed.
pub const MAX_STEPS: u64 = 50_000_000;

#[derive(Debug, Clone, Serialize)]
pub struct KeyReport {
    pub key: String,
    pub operations: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    pub key: String,
    pub message: String,
    pub operations: Vec<Operation>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub keys: Vec<KeyReport>,
    pub operations_checked: usize,
    pub anomalies: Vec<Anomaly>,
    /// Keys whose search gave up after [`MAX_STEPS`].
    pub undecided: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.anomalies.is_empty() && self.undecided.is_empty()
    }
}

/// Checks every key of the history.
pub fn check(operations: &[Operation]) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for o in operations {
        by_key.entry(o.op.key()).or_default().push(o);
    }
    let mut report = Report::default();
    for (key, ops) in by_key {
        let ops: Vec<&Operation> = ops.into_iter().filter(|o| counts(o)).collect();
        report.keys.push(KeyReport {
            key: key.to_string(),
            operations: ops.len(),
        });
        report.operations_checked += ops.len();
        match linearizable(&ops, MAX_STEPS) {
            Verdict::Yes => {}
            Verdict::GaveUp(steps) => report
                .undecided
                .push(format!("{key}: search gave up after {steps} steps")),
            Verdict::No => report.anomalies.push(explain(key, &ops)),
        }
    }
    report
}

/// Failed operations never happened and unknown reads say nothing.
fn counts(o: &Operation) -> bool {
    !matches!(
        (&o.op, &o.outcome),
        (_, Outcome::Failed) | (Op::Get { .. }, Outcome::Unknown)
    )
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Yes,
    No,
    GaveUp(u64),
}

/// One operation in the model's terms; values interned to small integers (0 = absent).
#[derive(Clone, Copy)]
enum Step {
    Read(u32),
    Write(u32),
    /// Compare-and-swap that answered: swapped or not.
    Cas {
        expected: u32,
        new: u32,
        swapped: bool,
    },
    /// Compare-and-swap with unknown outcome: swaps if it can.
    CasMaybe {
        expected: u32,
        new: u32,
    },
}

impl Step {
    /// The state after this step from `state`, or None if its answer is impossible there.
    fn apply(self, state: u32) -> Option<u32> {
        match self {
            Step::Read(v) => (v == state).then_some(state),
            Step::Write(v) => Some(v),
            Step::Cas {
                expected,
                new,
                swapped: true,
            } => (state == expected).then_some(new),
            Step::Cas {
                expected,
                swapped: false,
                ..
            } => (state != expected).then_some(state),
            Step::CasMaybe { expected, new } => Some(if state == expected { new } else { state }),
        }
    }
}

struct Interner(HashMap<String, u32>);

impl Interner {
    fn id(&mut self, v: Option<&String>) -> u32 {
        let Some(v) = v else { return 0 };
        let next = self.0.len() as u32 + 1;
        *self.0.entry(v.clone()).or_insert(next)
    }
}

fn step_of(o: &Operation, values: &mut Interner) -> Step {
    let unknown = o.outcome == Outcome::Unknown;
    match (&o.op, &o.outcome) {
        (Op::Get { .. }, Outcome::Read(v)) => Step::Read(values.id(v.as_ref())),
        (Op::Put { value, .. }, _) => Step::Write(values.id(Some(value))),
        (Op::Cas { expected, new, .. }, outcome) => {
            let expected = values.id(expected.as_ref());
            let new = values.id(Some(new));
            if unknown {
                Step::CasMaybe { expected, new }
            } else {
                Step::Cas {
                    expected,
                    new,
                    swapped: *outcome == Outcome::Swapped(true),
                }
            }
        }
        // A get with an unexpected outcome: treat as a read of nothing in particular that
        // cannot be satisfied, which `counts` prevents.
        (Op::Get { .. }, _) => Step::Read(u32::MAX),
    }
}

const NIL: usize = usize::MAX;

/// An entry of the time-ordered list: a call or a return of operation `op`.
struct Entry {
    op: usize,
    is_call: bool,
    /// For a call: the index of its return entry, if the operation returned.
    matching: usize,
    prev: usize,
    next: usize,
}

/// The Wing–Gong–Lowe search over one key's operations.
fn linearizable(ops: &[&Operation], max_steps: u64) -> Verdict {
    let mut values = Interner(HashMap::new());
    let steps: Vec<Step> = ops.iter().map(|o| step_of(o, &mut values)).collect();
    // Events: (time, kind, op), calls before returns at equal times (lenient: touching
    // operations count as concurrent).
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
    let mut known = 0usize;
    for (i, o) in ops.iter().enumerate() {
        events.push((o.invoke_ns, 0, i));
        if o.outcome != Outcome::Unknown {
            events.push((o.complete_ns.max(o.invoke_ns), 1, i));
            known += 1;
        }
    }
    events.sort_unstable();
    // Index 0 is the head sentinel.
    let mut list: Vec<Entry> = Vec::with_capacity(events.len() + 1);
    list.push(Entry {
        op: NIL,
        is_call: false,
        matching: NIL,
        prev: NIL,
        next: NIL,
    });
    let mut call_of = vec![NIL; ops.len()];
    for (_, kind, op) in &events {
        let idx = list.len();
        let prev = idx - 1;
        list[prev].next = idx;
        list.push(Entry {
            op: *op,
            is_call: *kind == 0,
            matching: NIL,
            prev,
            next: NIL,
        });
        if *kind == 0 {
            call_of[*op] = idx;
        } else {
            let c = call_of[*op];
            list[c].matching = idx;
        }
    }

    // The set of linearized operations, as a 128-bit Zobrist hash (XOR of a random code per
    // operation): O(1) to update and 20 bytes per cache entry, where a bitset would cost
    // ops/8 bytes each. A collision could only prune a branch (a false alarm, never a false
    // pass), with odds of about n^2 / 2^128.
    let codes = zobrist_codes(ops.len());
    let mut linearized = 0u128;
    let mut cache: HashSet<(u128, u32)> = HashSet::new();
    let mut stack: Vec<(usize, u32)> = Vec::new();
    let mut state = 0u32;
    let mut remaining_known = known;
    let mut entry = list[0].next;
    let mut n_steps = 0u64;
    while remaining_known > 0 {
        n_steps += 1;
        if n_steps > max_steps {
            return Verdict::GaveUp(n_steps);
        }
        if entry == NIL {
            // Only unknown calls are left before the end: cannot happen while a known
            // operation remains (its return is in the list), but be safe.
            return Verdict::No;
        }
        let e = &list[entry];
        if e.is_call {
            let op = e.op;
            if let Some(next_state) = steps[op].apply(state) {
                let bits = linearized ^ codes[op];
                if cache.insert((bits, next_state)) {
                    stack.push((entry, state));
                    state = next_state;
                    linearized = bits;
                    if list[entry].matching != NIL {
                        remaining_known -= 1;
                    }
                    lift(&mut list, entry);
                    entry = list[0].next;
                    continue;
                }
            }
            entry = list[entry].next;
        } else {
            // A return reached with its operation not yet placed: undo the last choice.
            let Some((call, prev_state)) = stack.pop() else {
                return Verdict::No;
            };
            state = prev_state;
            let op = list[call].op;
            linearized ^= codes[op];
            if list[call].matching != NIL {
                remaining_known += 1;
            }
            unlift(&mut list, call);
            entry = list[call].next;
        }
    }
    Verdict::Yes
}

/// Deterministic pseudo-random codes (SplitMix64), one per operation.
fn zobrist_codes(n: usize) -> Vec<u128> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    (0..n)
        .map(|_| (u128::from(next()) << 64) | u128::from(next()))
        .collect()
}

fn lift(list: &mut [Entry], call: usize) {
    let (p, n) = (list[call].prev, list[call].next);
    list[p].next = n;
    if n != NIL {
        list[n].prev = p;
    }
    let m = list[call].matching;
    if m != NIL {
        let (p, n) = (list[m].prev, list[m].next);
        list[p].next = n;
        if n != NIL {
            list[n].prev = p;
        }
    }
}

fn unlift(list: &mut [Entry], call: usize) {
    let m = list[call].matching;
    if m != NIL {
        let (p, n) = (list[m].prev, list[m].next);
        list[p].next = m;
        if n != NIL {
            list[n].prev = m;
        }
    }
    let (p, n) = (list[call].prev, list[call].next);
    list[p].next = call;
    if n != NIL {
        list[n].prev = call;
    }
}

/// Finds where the key's history stops being linearizable and names the operations there:
/// the shortest failing prefix (by invocation) ends with an operation that cannot be
/// placed; report it, the operations overlapping it, and the writes of the value it saw.
fn explain(key: &str, ops: &[&Operation]) -> Anomaly {
    let mut sorted: Vec<&Operation> = ops.to_vec();
    sorted.sort_by_key(|o| (o.invoke_ns, o.id));
    // Invariant: prefix(lo) passes, prefix(hi) fails.
    let (mut lo, mut hi) = (0usize, sorted.len());
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if linearizable(&sorted[..mid], MAX_STEPS) == Verdict::No {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let culprit = sorted[hi - 1];
    let end = if culprit.outcome == Outcome::Unknown {
        u64::MAX
    } else {
        culprit.complete_ns
    };
    let seen = match (&culprit.op, &culprit.outcome) {
        (Op::Get { .. }, Outcome::Read(v)) => v.clone(),
        (Op::Cas { expected, .. }, Outcome::Swapped(true)) => expected.clone(),
        _ => None,
    };
    let mut involved: Vec<Operation> = Vec::new();
    // Writes of the value it saw.
    for o in &sorted[..hi] {
        let wrote = match &o.op {
            Op::Put { value, .. } => Some(value),
            Op::Cas { new, .. } => Some(new),
            Op::Get { .. } => None,
        };
        if seen.is_some() && wrote == seen.as_ref() && o.id != culprit.id {
            involved.push((*o).clone());
        }
    }
    // The latest writes that completed before it began, and what overlapped it.
    let before: Vec<&&Operation> = sorted[..hi]
        .iter()
        .filter(|o| {
            o.id != culprit.id
                && o.outcome != Outcome::Unknown
                && o.complete_ns < culprit.invoke_ns
                && !matches!(o.op, Op::Get { .. })
        })
        .collect();
    for o in before.iter().rev().take(3) {
        if !involved.iter().any(|i| i.id == o.id) {
            involved.push((**o).clone());
        }
    }
    for o in &sorted[..hi] {
        let o_end = if o.outcome == Outcome::Unknown {
            u64::MAX
        } else {
            o.complete_ns
        };
        let overlaps = o.invoke_ns <= end && o_end >= culprit.invoke_ns;
        if overlaps && o.id != culprit.id && !involved.iter().any(|i| i.id == o.id) {
            involved.push((*o).clone());
        }
        if involved.len() >= 9 {
            break;
        }
    }
    involved.sort_by_key(|o| o.invoke_ns);
    let message = format!(
        "op {} ({}) cannot be linearized: no order of the {} operations invoked up to it, \
         consistent with real time, gives every answer",
        culprit.id,
        describe(culprit),
        hi
    );
    let mut operations = vec![culprit.clone()];
    operations.extend(involved);
    Anomaly {
        key: key.to_string(),
        message,
        operations,
    }
}

fn describe(o: &Operation) -> String {
    let outcome = match &o.outcome {
        Outcome::Read(v) => format!("-> {v:?}"),
        Outcome::Written => "-> ok".into(),
        Outcome::Swapped(s) => format!("-> swapped {s}"),
        Outcome::Failed => "-> failed".into(),
        Outcome::Unknown => "-> unknown".into(),
    };
    match &o.op {
        Op::Get { key } => format!("get {key} {outcome}"),
        Op::Put { key, value } => format!("put {key}={value} {outcome}"),
        Op::Cas { key, expected, new } => format!("cas {key} {expected:?}->{new} {outcome}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct H(Vec<Operation>);

    impl H {
        fn new() -> Self {
            H(Vec::new())
        }
        fn add(&mut self, op: Op, invoke: u64, complete: u64, outcome: Outcome) -> &mut Self {
            let id = self.0.len() as u64;
            self.0.push(Operation {
                id,
                client: id as u32,
                op,
                invoke_ns: invoke,
                complete_ns: complete,
                outcome,
                revision: None,
            });
            self
        }
        fn put(&mut self, k: &str, v: &str, a: u64, b: u64) -> &mut Self {
            self.add(
                Op::Put {
                    key: k.into(),
                    value: v.into(),
                },
                a,
                b,
                Outcome::Written,
            )
        }
        fn get(&mut self, k: &str, v: Option<&str>, a: u64, b: u64) -> &mut Self {
            self.add(
                Op::Get { key: k.into() },
                a,
                b,
                Outcome::Read(v.map(str::to_string)),
            )
        }
        fn ok(&self) -> bool {
            check(&self.0).ok()
        }
    }

    #[test]
    fn sequential_history_passes() {
        let mut h = H::new();
        h.get("k", None, 0, 1)
            .put("k", "a", 2, 3)
            .get("k", Some("a"), 4, 5)
            .put("k", "b", 6, 7)
            .get("k", Some("b"), 8, 9);
        assert!(h.ok());
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        for seen in [Some("a"), Some("b")] {
            let mut h = H::new();
            h.put("k", "a", 0, 1)
                .put("k", "b", 2, 10)
                .get("k", seen, 3, 4);
            assert!(h.ok(), "reading {seen:?} during the write of b is fine");
        }
    }

    #[test]
    fn stale_read_fails() {
        let mut h = H::new();
        h.put("k", "a", 0, 1)
            .put("k", "b", 2, 3)
            .get("k", Some("a"), 4, 5);
        let r = check(&h.0);
        assert!(!r.ok());
        assert!(r.anomalies[0].message.contains("cannot be linearized"));
        assert_eq!(
            r.anomalies[0].operations[0].id, 2,
            "the stale read is named"
        );
    }

    #[test]
    fn read_of_a_value_never_written_fails() {
        let mut h = H::new();
        h.put("k", "a", 0, 1).get("k", Some("zzz"), 2, 3);
        assert!(!h.ok());
    }

    #[test]
    fn lost_write_fails() {
        // b acknowledged, then a read (not overlapping) sees nothing at all.
        let mut h = H::new();
        h.put("k", "b", 0, 1).get("k", None, 2, 3);
        assert!(!h.ok());
    }

    #[test]
    fn cas_semantics() {
        let cas = |expected: Option<&str>, new: &str, swapped| {
            (
                Op::Cas {
                    key: "k".into(),
                    expected: expected.map(str::to_string),
                    new: new.into(),
                },
                Outcome::Swapped(swapped),
            )
        };
        let mut good = H::new();
        let (op, out) = cas(None, "a", true);
        good.add(op, 0, 1, out);
        let (op, out) = cas(Some("x"), "b", false);
        good.add(op, 2, 3, out);
        let (op, out) = cas(Some("a"), "c", true);
        good.add(op, 4, 5, out);
        good.get("k", Some("c"), 6, 7);
        assert!(good.ok());

        let mut bad = H::new();
        bad.put("k", "a", 0, 1);
        let (op, out) = cas(Some("x"), "b", true);
        bad.add(op, 2, 3, out);
        assert!(!bad.ok(), "a swap whose compare could not hold");

        let mut bad = H::new();
        bad.put("k", "a", 0, 1);
        let (op, out) = cas(Some("a"), "b", false);
        bad.add(op, 2, 3, out);
        assert!(!bad.ok(), "a failed compare that should have held");
    }

    #[test]
    fn unknown_writes_may_or_may_not_happen() {
        let unknown = |h: &mut H, v: &str, a: u64| {
            h.add(
                Op::Put {
                    key: "k".into(),
                    value: v.into(),
                },
                a,
                a + 1,
                Outcome::Unknown,
            );
        };
        let mut seen = H::new();
        seen.put("k", "a", 0, 1);
        unknown(&mut seen, "u", 2);
        seen.get("k", Some("a"), 10, 11).get("k", Some("u"), 20, 21);
        assert!(seen.ok(), "an unknown write that takes effect late");

        let mut never = H::new();
        never.put("k", "a", 0, 1);
        unknown(&mut never, "u", 2);
        never.get("k", Some("a"), 10, 11);
        assert!(never.ok(), "an unknown write that never takes effect");

        let mut back = H::new();
        back.put("k", "a", 0, 1);
        unknown(&mut back, "u", 2);
        back.get("k", Some("u"), 10, 11).get("k", Some("a"), 20, 21);
        assert!(!back.ok(), "once seen, an unknown write cannot be undone");
    }

    #[test]
    fn failed_writes_are_left_out() {
        let mut h = H::new();
        h.put("k", "a", 0, 1);
        h.add(
            Op::Put {
                key: "k".into(),
                value: "f".into(),
            },
            2,
            3,
            Outcome::Failed,
        );
        h.get("k", Some("f"), 4, 5);
        assert!(!h.ok(), "a read of a write that definitely failed");
    }

    #[test]
    fn keys_are_checked_apart() {
        let mut h = H::new();
        h.put("a", "1", 0, 1)
            .put("b", "2", 2, 3)
            .get("a", Some("1"), 4, 5)
            .get("b", Some("2"), 4, 5);
        let r = check(&h.0);
        assert!(r.ok());
        assert_eq!(r.keys.len(), 2);
        let mut bad = H::new();
        bad.put("a", "1", 0, 1).get("b", Some("1"), 2, 3);
        let r = check(&bad.0);
        assert_eq!(r.anomalies.len(), 1);
        assert_eq!(r.anomalies[0].key, "b");
    }

    #[test]
    fn a_long_concurrent_linearizable_history_passes() {
        // 10 clients on one register; each operation takes effect at a point inside its
        // interval (the simulation's truth), intervals overlap; a few writes time out.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut h = H::new();
        let mut value: Option<String> = None;
        let mut t = 0u64;
        let mut busy_until = [0u64; 10];
        for i in 0..5_000u64 {
            t += rng.random_range(1..5);
            let c = (i % 10) as usize;
            let invoke = t.max(busy_until[c]);
            let effect = invoke + rng.random_range(0..20);
            let complete = effect + rng.random_range(0..20);
            busy_until[c] = complete + 1;
            t = effect;
            let r: u32 = rng.random_range(0..10);
            if r < 4 {
                h.get("k", value.as_deref(), invoke, complete);
            } else {
                let v = format!("v{i}");
                value = Some(v.clone());
                let outcome = if r == 9 && i % 7 == 0 {
                    Outcome::Unknown
                } else {
                    Outcome::Written
                };
                h.add(
                    Op::Put {
                        key: "k".into(),
                        value: v,
                    },
                    invoke,
                    complete,
                    outcome,
                );
            }
        }
        let r = check(&h.0);
        assert!(r.ok(), "{:?}", r.anomalies.first().map(|a| &a.message));
        assert_eq!(r.operations_checked, 5_000);
    }

    /// Every order the real-time constraints allow, tried one by one (unknown operations
    /// may also be left out): the definition itself, for tiny histories.
    fn brute(ops: &[&Operation]) -> bool {
        fn go(ops: &[&Operation], steps: &[Step], placed: &mut Vec<bool>, state: u32) -> bool {
            let known_left = ops
                .iter()
                .zip(placed.iter())
                .any(|(o, p)| !p && o.outcome != Outcome::Unknown);
            if !known_left {
                return true;
            }
            for i in 0..ops.len() {
                if placed[i] {
                    continue;
                }
                // Every unplaced known operation that ended before this one began must go first.
                let blocked = ops.iter().enumerate().any(|(j, o)| {
                    j != i
                        && !placed[j]
                        && o.outcome != Outcome::Unknown
                        && o.complete_ns < ops[i].invoke_ns
                });
                if blocked {
                    continue;
                }
                if let Some(next) = steps[i].apply(state) {
                    placed[i] = true;
                    if go(ops, steps, placed, next) {
                        return true;
                    }
                    placed[i] = false;
                }
            }
            false
        }
        let ops: Vec<&Operation> = ops.iter().copied().filter(|o| counts(o)).collect();
        let mut values = Interner(HashMap::new());
        let steps: Vec<Step> = ops.iter().map(|o| step_of(o, &mut values)).collect();
        go(&ops, &steps, &mut vec![false; ops.len()], 0)
    }

    #[test]
    fn agrees_with_brute_force_on_random_small_histories() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let pool = ["a", "b", "c"];
        let (mut yes, mut no) = (0, 0);
        for _ in 0..3_000 {
            let mut h = H::new();
            for _ in 0..rng.random_range(1..7) {
                let a = rng.random_range(0..20u64);
                let b = a + rng.random_range(0..8u64);
                let v = |rng: &mut rand::rngs::StdRng| {
                    (rng.random_range(0..4) > 0).then(|| pool[rng.random_range(0..3)].to_string())
                };
                let unknown = rng.random_range(0..8) == 0;
                let (op, outcome) = match rng.random_range(0..3) {
                    0 => (Op::Get { key: "k".into() }, Outcome::Read(v(&mut rng))),
                    1 => (
                        Op::Put {
                            key: "k".into(),
                            value: pool[rng.random_range(0..3)].into(),
                        },
                        Outcome::Written,
                    ),
                    _ => (
                        Op::Cas {
                            key: "k".into(),
                            expected: v(&mut rng),
                            new: pool[rng.random_range(0..3)].into(),
                        },
                        Outcome::Swapped(rng.random_bool(0.5)),
                    ),
                };
                let outcome = if unknown { Outcome::Unknown } else { outcome };
                h.add(op, a, b, outcome);
            }
            let refs: Vec<&Operation> = h.0.iter().collect();
            let expected = brute(&refs);
            assert_eq!(h.ok(), expected, "history: {:#?}", h.0);
            if expected {
                yes += 1;
            } else {
                no += 1;
            }
        }
        assert!(yes > 300 && no > 300, "both kinds were tried: {yes} / {no}");
    }
}
