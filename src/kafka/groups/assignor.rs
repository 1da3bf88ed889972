//! The server-side assignors of the consumer group protocol (KIP-848): `uniform` (the
//! default) and `range`, chosen by the members' `server_assignor`.
//!
//! Pure functions, run on the group's coordinator shard by `consumer::ConsumerGroup` when
//! its group epoch moves past its assignment epoch. Both give every subscribed partition to
//! exactly one member subscribed to its topic.
//!
//! - `uniform`: balanced (the partition counts of members with the same subscription differ
//!   by at most one) and sticky: a member keeps what it had in the previous target as far as
//!   balance allows, so a member joining or leaving moves as few partitions as possible.
//! - `range`: per topic, its members sorted by member id take contiguous ranges of the
//!   partitions, the first `partitions % members` one more (Kafka's range assignor), so
//!   members subscribed to co-partitioned topics get the same partition numbers of each.

use std::collections::{BTreeMap, BTreeSet};

/// A topic's id (Kafka's topic UUID).
pub type TopicId = [u8; 16];

/// A member's partitions, by topic id.
pub type Assignment = BTreeMap<TopicId, BTreeSet<i32>>;

/// A topic the group subscribes to, as the catalog had it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub id: TopicId,
    pub partitions: i32,
}

/// What an assignor knows of one member.
pub struct MemberSpec<'a> {
    pub id: &'a str,
    /// The topic names it subscribes to (names and regex matches), existing or not.
    pub topics: &'a BTreeSet<String>,
    /// Its partitions in the previous target assignment.
    pub previous: Option<&'a Assignment>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignor {
    Uniform,
    Range,
}

impl Assignor {
    /// The assignor a `server_assignor` names; `None` for one this broker does not have
    /// (UNSUPPORTED_ASSIGNOR).
    pub fn named(name: &str) -> Option<Assignor> {
        match name {
            "uniform" => Some(Assignor::Uniform),
            "range" => Some(Assignor::Range),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Assignor::Uniform => "uniform",
            Assignor::Range => "range",
        }
    }

    /// The target assignment of every member (each member has an entry, maybe empty).
    pub fn assign(
        self,
        members: &[MemberSpec<'_>],
        topics: &BTreeMap<String, TopicInfo>,
    ) -> BTreeMap<String, Assignment> {
        match self {
            Assignor::Uniform => uniform(members, topics),
            Assignor::Range => range(members, topics),
        }
    }
}

fn range(
    members: &[MemberSpec<'_>],
    topics: &BTreeMap<String, TopicInfo>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = members
        .iter()
        .map(|m| (m.id.to_owned(), Assignment::new()))
        .collect();
    for (name, info) in topics {
        let mut subscribers: Vec<&str> = members
            .iter()
            .filter(|m| m.topics.contains(name))
            .map(|m| m.id)
            .collect();
        if subscribers.is_empty() || info.partitions <= 0 {
            continue;
        }
        subscribers.sort_unstable();
        let n = subscribers.len() as i32;
        let (each, extra) = (info.partitions / n, info.partitions % n);
        let mut next = 0;
        for (i, member) in subscribers.iter().enumerate() {
            let count = each + i32::from((i as i32) < extra);
            if count == 0 {
                continue;
            }
            if let Some(a) = out.get_mut(*member) {
                a.entry(info.id).or_default().extend(next..next + count);
            }
            next += count;
        }
    }
    out
}

fn uniform(
    members: &[MemberSpec<'_>],
    topics: &BTreeMap<String, TopicInfo>,
) -> BTreeMap<String, Assignment> {
    // Every partition to assign, and which members may take it.
    let by_id: BTreeMap<TopicId, &str> = topics
        .iter()
        .map(|(name, t)| (t.id, name.as_str()))
        .collect();
    let eligible = |member: usize, topic: &TopicId| -> bool {
        by_id
            .get(topic)
            .is_some_and(|name| members[member].topics.contains(*name))
    };
    let mut owner: BTreeMap<(TopicId, i32), usize> = BTreeMap::new();
    let mut counts = vec![0usize; members.len()];
    // 1. Stickiness: each member keeps its previous partitions that still exist and that it
    //    still subscribes to.
    for (i, m) in members.iter().enumerate() {
        let Some(previous) = m.previous else { continue };
        for (topic, parts) in previous {
            let Some(name) = by_id.get(topic) else {
                continue;
            };
            let Some(info) = topics.get(*name) else {
                continue;
            };
            if !eligible(i, topic) {
                continue;
            }
            for &p in parts {
                if p < info.partitions && !owner.contains_key(&(*topic, p)) {
                    owner.insert((*topic, p), i);
                    counts[i] += 1;
                }
            }
        }
    }
    // 2. Every unowned partition to the eligible member with the fewest partitions.
    for (name, info) in topics {
        let subscribers: Vec<usize> = (0..members.len())
            .filter(|&i| members[i].topics.contains(name))
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        for p in 0..info.partitions {
            if owner.contains_key(&(info.id, p)) {
                continue;
            }
            if let Some(&to) = subscribers.iter().min_by_key(|&&i| (counts[i], i)) {
                owner.insert((info.id, p), to);
                counts[to] += 1;
            }
        }
    }
    // 3. Balance: move a partition from a member holding more than one above another
    //    eligible member, until no such move remains (each move lowers the spread, so this
    //    ends).
    loop {
        let mut moved = false;
        let keys: Vec<(TopicId, i32)> = owner.keys().copied().collect();
        for key in keys {
            let Some(&from) = owner.get(&key) else {
                continue;
            };
            let best = (0..members.len())
                .filter(|&i| i != from && eligible(i, &key.0))
                .min_by_key(|&i| (counts[i], i));
            if let Some(to) = best {
                if counts[from] > counts[to] + 1 {
                    owner.insert(key, to);
                    counts[from] -= 1;
                    counts[to] += 1;
                    moved = true;
                }
            }
        }
        if !moved {
            break;
        }
    }
    let mut out: BTreeMap<String, Assignment> = members
        .iter()
        .map(|m| (m.id.to_owned(), Assignment::new()))
        .collect();
    for ((topic, p), i) in owner {
        if let Some(a) = out.get_mut(members[i].id) {
            a.entry(topic).or_default().insert(p);
        }
    }
    out
}

/// The number of partitions in an assignment.
pub fn count(a: &Assignment) -> usize {
    a.values().map(BTreeSet::len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(n: u8, partitions: i32) -> TopicInfo {
        TopicInfo {
            id: [n; 16],
            partitions,
        }
    }

    fn subs(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn check_complete(out: &BTreeMap<String, Assignment>, topics: &BTreeMap<String, TopicInfo>) {
        let mut seen = BTreeSet::new();
        for a in out.values() {
            for (t, parts) in a {
                for p in parts {
                    assert!(seen.insert((*t, *p)), "partition {p} assigned twice");
                }
            }
        }
        let total: i32 = topics.values().map(|t| t.partitions).sum();
        assert_eq!(seen.len(), total as usize, "every partition assigned once");
    }

    #[test]
    fn uniform_balances_and_is_sticky_when_a_member_joins() {
        let topics = BTreeMap::from([("t".to_string(), topic(1, 12))]);
        let s = subs(&["t"]);
        let three: Vec<MemberSpec> = ["a", "b", "c"]
            .iter()
            .map(|id| MemberSpec {
                id,
                topics: &s,
                previous: None,
            })
            .collect();
        let first = Assignor::Uniform.assign(&three, &topics);
        check_complete(&first, &topics);
        assert!(first.values().all(|a| count(a) == 4));

        let mut four: Vec<MemberSpec> = ["a", "b", "c"]
            .iter()
            .map(|id| MemberSpec {
                id,
                topics: &s,
                previous: first.get(*id),
            })
            .collect();
        four.push(MemberSpec {
            id: "d",
            topics: &s,
            previous: None,
        });
        let second = Assignor::Uniform.assign(&four, &topics);
        check_complete(&second, &topics);
        assert!(second.values().all(|a| count(a) == 3), "{second:?}");
        // Sticky: the old members only gave partitions up, none moved between them.
        for id in ["a", "b", "c"] {
            let before = &first[id][&[1; 16]];
            let after = &second[id][&[1; 16]];
            assert!(
                after.is_subset(before),
                "{id} kept a subset of its partitions"
            );
        }
    }

    #[test]
    fn uniform_gives_each_topic_only_to_its_subscribers() {
        let topics = BTreeMap::from([
            ("x".to_string(), topic(1, 3)),
            ("y".to_string(), topic(2, 5)),
        ]);
        let (sx, sxy) = (subs(&["x"]), subs(&["x", "y"]));
        let members = vec![
            MemberSpec {
                id: "a",
                topics: &sx,
                previous: None,
            },
            MemberSpec {
                id: "b",
                topics: &sxy,
                previous: None,
            },
        ];
        let out = Assignor::Uniform.assign(&members, &topics);
        check_complete(&out, &topics);
        assert!(
            !out["a"].contains_key(&[2; 16]),
            "a does not subscribe to y"
        );
        assert_eq!(count(&out["a"]) + count(&out["b"]), 8);
        assert!(count(&out["a"]) >= 3, "a takes x since b has y: {out:?}");
    }

    #[test]
    fn range_gives_contiguous_ranges_in_member_order() {
        let topics = BTreeMap::from([
            ("t".to_string(), topic(1, 7)),
            ("u".to_string(), topic(2, 7)),
        ]);
        let s = subs(&["t", "u"]);
        let members: Vec<MemberSpec> = ["m2", "m1", "m3"]
            .iter()
            .map(|id| MemberSpec {
                id,
                topics: &s,
                previous: None,
            })
            .collect();
        let out = Assignor::Range.assign(&members, &topics);
        check_complete(&out, &topics);
        let set = |v: &[i32]| v.iter().copied().collect::<BTreeSet<i32>>();
        assert_eq!(out["m1"][&[1; 16]], set(&[0, 1, 2]));
        assert_eq!(out["m2"][&[1; 16]], set(&[3, 4]));
        assert_eq!(out["m3"][&[1; 16]], set(&[5, 6]));
        // Co-partitioned topics: the same partition numbers of each.
        for id in ["m1", "m2", "m3"] {
            assert_eq!(out[id][&[1; 16]], out[id][&[2; 16]]);
        }
    }

    #[test]
    fn names_of_assignors() {
        assert_eq!(Assignor::named("uniform"), Some(Assignor::Uniform));
        assert_eq!(Assignor::named("range"), Some(Assignor::Range));
        assert_eq!(Assignor::named("cooperative-sticky"), None);
    }
}
