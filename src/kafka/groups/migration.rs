//! Online migration between the classic and the consumer group protocol (KIP-848, Kafka
//! 4's `group.consumer.migration.policy`), on the consumer group's side:
//!
//! - **upgrade**: a classic group whose members all use the `consumer` protocol type
//!   becomes a consumer group when a consumer-protocol member joins it
//!   (`ConsumerGroup::from_classic`): its generation becomes the group epoch, each member
//!   keeps what it owns (its decoded ConsumerProtocolAssignment) and its subscription;
//! - **classic members of a consumer group** keep speaking JoinGroup, SyncGroup, Heartbeat,
//!   LeaveGroup and OffsetCommit, translated here: their generation is their member epoch;
//!   a Heartbeat answers REBALANCE_IN_PROGRESS while they are not at the target assignment;
//!   a JoinGroup is answered at once (no leader: the group's assignor assigns) after the
//!   member gave up what its target no longer holds (a classic member revokes by
//!   rejoining: an eager one gave everything up before, a cooperative one drops what
//!   SyncGroup leaves out) and reconciled; SyncGroup returns what it owns as a
//!   ConsumerProtocolAssignment;
//! - **downgrade**: a consumer group whose members are all classic after a consumer
//!   member left becomes classic again (`ConsumerGroup::to_classic`), its members made to
//!   rejoin through a classic rebalance.
//!
//! Committed offsets belong to the group id and are untouched by either conversion.
//! Pure state machine, run on the group's coordinator shard inside `Coordinator`
//! (`consumer_coordinator.rs` routes the requests); unit-tested here.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;

use super::assignor::Assignment;
use super::consumer::{
    new_member_id, normalized, ClassicMember, ConsumerGroup, ConsumerMember, MemberState,
};
use super::group::{parse_subscription, Group, HandedOver, JoinRequest, Timeouts};
use crate::catalog::CatalogState;

/// The protocol type of Kafka consumers; the only one a consumer group takes.
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// A classic member's answered JoinGroup: its id, generation (member epoch) and protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassicJoined {
    pub member_id: String,
    pub generation: i32,
    pub protocol: String,
}

/// The topic names and partitions of a ConsumerProtocolAssignment (version prefix, then
/// the body); `None` when it cannot be read.
pub fn decode_assignment(bytes: &Bytes) -> Option<Vec<(String, Vec<i32>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let mut b = bytes.clone();
    if b.remaining() < 2 {
        return None;
    }
    let version = b.get_i16().clamp(0, 3);
    let a = ConsumerProtocolAssignment::decode(&mut b, version).ok()?;
    Some(
        a.assigned_partitions
            .into_iter()
            .map(|tp| (tp.topic.to_string(), tp.partitions))
            .collect(),
    )
}

/// A ConsumerProtocolAssignment (version 0) of named partitions.
pub fn encode_assignment(parts: &[(String, Vec<i32>)]) -> Bytes {
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(
        parts
            .iter()
            .map(|(t, p)| {
                TopicPartition::default()
                    .with_topic(TopicName(StrBytes::from_string(t.clone())))
                    .with_partitions(p.clone())
            })
            .collect(),
    );
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    if a.encode(&mut buf, 0).is_err() {
        // Only an over-long array fails to encode; none is built here.
        return Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
    buf.freeze()
}

/// The partitions a ConsumerProtocolSubscription v1+ says its member still owns (the
/// cooperative protocol's `owned_partitions`); `None` for v0 or one that does not decode.
pub fn owned_in_subscription(md: &Bytes) -> Option<Vec<(String, Vec<i32>)>> {
    let mut b = md.clone();
    if b.remaining() < 2 {
        return None;
    }
    let version = b.get_i16();
    if version < 1 {
        return None;
    }
    let sub = ConsumerProtocolSubscription::decode(&mut b, version.min(3)).ok()?;
    Some(
        sub.owned_partitions
            .into_iter()
            .map(|tp| (tp.topic.to_string(), tp.partitions))
            .collect(),
    )
}

/// The subscription a classic member offers: the topics of its first protocol's
/// ConsumerProtocolSubscription.
fn subscription(protocols: &[(String, Bytes)]) -> Vec<String> {
    let mut names = protocols
        .first()
        .map(|(_, md)| parse_subscription(md))
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

impl ConsumerGroup {
    /// Whether every member is a classic member (the group may turn classic again).
    pub fn only_classic(&self) -> bool {
        !self.members.is_empty() && self.members.values().all(|m| m.classic.is_some())
    }

    /// A classic group as a consumer group (online upgrade); `None` when it cannot be
    /// converted: another protocol type than `consumer`, or an assignment that does not
    /// decode. Each member owns what its last SyncGroup gave it (in a rebalance too: the
    /// caller answers its waiting JoinGroup and SyncGroup with REBALANCE_IN_PROGRESS).
    pub fn from_classic(
        classic: &Group,
        catalog: Arc<CatalogState>,
        now: Instant,
    ) -> Option<ConsumerGroup> {
        if classic.protocol_type.as_deref() != Some(CONSUMER_PROTOCOL_TYPE) {
            return None;
        }
        let mut g = ConsumerGroup::new(&classic.id);
        g.group_epoch = classic.generation;
        g.assignment_epoch = classic.generation;
        g.catalog = catalog.clone();
        for m in classic.members.values() {
            if m.protocol_type != CONSUMER_PROTOCOL_TYPE {
                return None;
            }
            let mut assigned = Assignment::new();
            for (topic, parts) in decode_assignment(&m.assignment)? {
                // A partition of a topic that is gone is nobody's.
                if let Some(t) = catalog.topic(&topic) {
                    assigned.entry(t.id).or_default().extend(parts);
                }
            }
            let assigned = normalized(assigned);
            let protocol = classic.protocol.clone().unwrap_or_default();
            let mut protocols = m.protocols.clone();
            // Its chosen protocol first: that subscription is the one it follows.
            protocols.sort_by_key(|(n, _)| *n != protocol);
            let mut member = ConsumerMember::classic(
                &m.id,
                ClassicMember {
                    session_timeout: m.session_timeout,
                    protocol_type: m.protocol_type.clone(),
                    protocols,
                },
                now,
            );
            member.instance_id = m.instance_id.clone();
            member.client_id = m.client_id.clone();
            member.client_host = m.client_host.clone();
            member.rebalance_timeout = m.rebalance_timeout;
            member.epoch = classic.generation;
            member.subscribed_names = subscription(&member.classic.as_ref()?.protocols);
            member.resolve(&catalog);
            for (t, parts) in &assigned {
                for p in parts {
                    g.owners.insert((*t, *p), m.id.clone());
                }
            }
            g.target.insert(m.id.clone(), assigned.clone());
            member.assigned = assigned;
            if let Some(instance) = &m.instance_id {
                g.statics.insert(instance.clone(), m.id.clone());
            }
            g.members.insert(m.id.clone(), member);
        }
        // What the classic group assigned is the target of its generation.
        g.metadata = g.topic_metadata();
        g.refresh(now);
        Some(g)
    }

    /// JoinGroup of a classic member (new, or rejoining) of this consumer group.
    pub fn classic_join(
        &mut self,
        req: JoinRequest,
        catalog: Arc<CatalogState>,
        max_size: usize,
        now: Instant,
    ) -> Result<ClassicJoined, i16> {
        if req.protocol_type != CONSUMER_PROTOCOL_TYPE || req.protocols.is_empty() {
            return Err(ResponseError::InconsistentGroupProtocol.code());
        }
        if catalog.version >= self.catalog.version {
            self.catalog = catalog;
        }
        let mut changed = false;
        let returning = req
            .instance_id
            .as_ref()
            .and_then(|i| self.statics.get(i))
            .filter(|old| self.members.contains_key(*old))
            .cloned();
        let id = if let (true, Some(old)) = (req.member_id.is_empty(), returning) {
            // A static member restarting: the new member id takes the old one's place and
            // partitions, without a rebalance (KIP-345).
            if self.members.get(&old).is_none_or(|m| m.classic.is_none()) {
                return Err(ResponseError::UnreleasedInstanceId.code());
            }
            let id = new_member_id(&self.id);
            self.rename_member(&old, &id);
            id
        } else if req.member_id.is_empty() {
            let id = new_member_id(&self.id);
            if let Some(instance) = &req.instance_id {
                self.statics.insert(instance.clone(), id.clone());
            }
            if self.members.len() >= max_size {
                return Err(ResponseError::GroupMaxSizeReached.code());
            }
            let member = ConsumerMember::classic(
                &id,
                ClassicMember {
                    session_timeout: req.session_timeout,
                    protocol_type: req.protocol_type.clone(),
                    protocols: Vec::new(),
                },
                now,
            );
            self.members.insert(id.clone(), member);
            changed = true;
            id
        } else {
            match self.members.get(&req.member_id) {
                Some(m) if m.classic.is_some() => req.member_id.clone(),
                _ => return Err(ResponseError::UnknownMemberId.code()),
            }
        };
        let names = subscription(&req.protocols);
        let protocol = req.protocols[0].0.clone();
        let catalog = self.catalog.clone();
        let Some(m) = self.members.get_mut(&id) else {
            return Err(ResponseError::UnknownMemberId.code());
        };
        m.last_heartbeat = now;
        m.client_id = req.client_id;
        m.client_host = req.client_host;
        m.instance_id = req.instance_id.or(m.instance_id.take());
        m.rebalance_timeout = req.rebalance_timeout;
        m.classic = Some(ClassicMember {
            session_timeout: req.session_timeout,
            protocol_type: req.protocol_type,
            protocols: req.protocols,
        });
        if names != m.subscribed_names {
            m.subscribed_names = names;
            m.resolved_at = None;
            m.resolve(&catalog);
            changed = true;
        }
        if changed {
            self.group_epoch += 1;
        }
        self.refresh(now);
        // Rejoining, it gives up what its target no longer holds: at once when it says it
        // owns none of that (an eager member revoked everything before rejoining), else
        // once it rejoins without it (a cooperative one, revoking after this SyncGroup).
        let target = self.target.get(&id).cloned().unwrap_or_default();
        let reported = self
            .members
            .get(&id)
            .and_then(|m| m.classic.as_ref())
            .and_then(|c| c.protocols.first())
            .and_then(|(_, md)| owned_in_subscription(md));
        let reported: Option<Assignment> = reported.map(|parts| {
            let mut a = Assignment::new();
            for (topic, ps) in parts {
                if let Some(t) = self.catalog.topic(&topic) {
                    a.entry(t.id).or_default().extend(ps);
                }
            }
            normalized(a)
        });
        let Some(m) = self.members.get_mut(&id) else {
            return Err(ResponseError::UnknownMemberId.code());
        };
        let in_target = |a: &Assignment, keep: bool| -> Assignment {
            normalized(
                a.iter()
                    .map(|(t, parts)| {
                        let tp = target.get(t);
                        let mine: BTreeSet<i32> = parts
                            .iter()
                            .copied()
                            .filter(|p| tp.is_some_and(|tp| tp.contains(p)) == keep)
                            .collect();
                        (*t, mine)
                    })
                    .collect(),
            )
        };
        let mut held = m.assigned.clone();
        for (t, parts) in &m.pending_revocation {
            held.entry(*t).or_default().extend(parts.iter().copied());
        }
        let to_revoke = in_target(&held, false);
        let still_owns_revoked = reported.as_ref().is_some_and(|r| {
            r.iter().any(|(t, parts)| {
                to_revoke
                    .get(t)
                    .is_some_and(|mine| !mine.is_disjoint(parts))
            })
        });
        if still_owns_revoked {
            let owned = reported.unwrap_or_default();
            self.reconcile(&id, Some(&owned), now);
        } else {
            let kept = in_target(&m.assigned, true);
            m.assigned = kept.clone();
            m.pending_revocation = Assignment::new();
            m.revoke_deadline = None;
            if m.state == MemberState::UnrevokedPartitions {
                m.state = MemberState::UnreleasedPartitions;
            }
            self.owners.retain(|_, owner| *owner != id);
            for (t, parts) in &kept {
                for p in parts {
                    self.owners.insert((*t, *p), id.clone());
                }
            }
            self.reconcile(&id, Some(&kept), now);
        }
        let generation = self.members.get(&id).map_or(-1, |m| m.epoch);
        Ok(ClassicJoined {
            member_id: id,
            generation,
            protocol,
        })
    }

    /// Moves a member to a new id: its partitions, target and instance id go with it.
    fn rename_member(&mut self, old: &str, new: &str) {
        let Some(mut m) = self.members.remove(old) else {
            return;
        };
        m.id = new.to_owned();
        if let Some(t) = self.target.remove(old) {
            self.target.insert(new.to_owned(), t);
        }
        for owner in self.owners.values_mut() {
            if owner == old {
                *owner = new.to_owned();
            }
        }
        if let Some(instance) = &m.instance_id {
            self.statics.insert(instance.clone(), new.to_owned());
        }
        self.members.insert(new.to_owned(), m);
    }

    /// The classic member `member_id` at `generation`, or the code that refuses it.
    fn classic_member(
        &mut self,
        member_id: &str,
        generation: i32,
    ) -> Result<&mut ConsumerMember, i16> {
        let Some(m) = self.members.get_mut(member_id) else {
            return Err(ResponseError::UnknownMemberId.code());
        };
        if m.classic.is_none() {
            return Err(ResponseError::InconsistentGroupProtocol.code());
        }
        if m.epoch != generation {
            return Err(ResponseError::IllegalGeneration.code());
        }
        Ok(m)
    }

    /// SyncGroup of a classic member: what it owns, as a ConsumerProtocolAssignment.
    pub fn classic_sync(
        &mut self,
        member_id: &str,
        generation: i32,
        now: Instant,
    ) -> Result<Bytes, i16> {
        let m = self.classic_member(member_id, generation)?;
        m.last_heartbeat = now;
        let assigned = m.assigned.clone();
        let named: Vec<(String, Vec<i32>)> = self
            .named(&assigned)
            .into_iter()
            .map(|(_, name, parts)| (name, parts))
            .collect();
        Ok(encode_assignment(&named))
    }

    /// Heartbeat of a classic member: REBALANCE_IN_PROGRESS while it is not at its target
    /// (it rejoins to move on, within its rebalance timeout), else 0.
    pub fn classic_heartbeat(&mut self, member_id: &str, generation: i32, now: Instant) -> i16 {
        let assignment_epoch = self.assignment_epoch;
        let settled = self.group_epoch == assignment_epoch;
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        match self.classic_member(member_id, generation) {
            Err(code) => code,
            Ok(m) => {
                m.last_heartbeat = now;
                let at_target = settled
                    && m.epoch == assignment_epoch
                    && m.state == MemberState::Stable
                    && normalized(m.assigned.clone()) == normalized(target);
                if at_target {
                    0
                } else {
                    // It must rejoin within its rebalance timeout, or it is removed
                    // (`tick`) and its partitions go to the others.
                    if m.revoke_deadline.is_none() {
                        m.revoke_deadline = Some(now + m.rebalance_timeout);
                    }
                    ResponseError::RebalanceInProgress.code()
                }
            }
        }
    }

    /// LeaveGroup of a classic member.
    pub fn classic_leave(&mut self, member_id: &str, now: Instant) -> i16 {
        match self.members.get(member_id) {
            Some(m) if m.classic.is_some() => {
                self.remove_member(member_id, now);
                0
            }
            Some(_) => ResponseError::InconsistentGroupProtocol.code(),
            None => ResponseError::UnknownMemberId.code(),
        }
    }

    /// The classic group this group becomes when only classic members are left (online
    /// downgrade); its members rejoin through a classic rebalance.
    pub fn to_classic(&self, t: Timeouts, now: Instant) -> Group {
        let members = self
            .members
            .values()
            .filter_map(|m| {
                let c = m.classic.as_ref()?;
                let named: Vec<(String, Vec<i32>)> = self
                    .named(&m.assigned)
                    .into_iter()
                    .map(|(_, name, parts)| (name, parts))
                    .collect();
                Some(HandedOver {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout: c.session_timeout,
                    rebalance_timeout: m.rebalance_timeout,
                    protocol_type: c.protocol_type.clone(),
                    protocols: c.protocols.clone(),
                    assignment: encode_assignment(&named),
                })
            })
            .collect();
        Group::handed_over(&self.id, self.group_epoch, members, t, now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::kafka::groups::consumer::{Heartbeat, LEAVE_EPOCH};
    use crate::kafka::groups::group::State;

    use crate::kafka::groups::consumer::tests::{join as consumer_join, settings, T};

    fn catalog() -> Arc<CatalogState> {
        crate::kafka::groups::consumer::tests::catalog(4)
    }

    fn timeouts() -> Timeouts {
        Timeouts {
            initial_rebalance_delay: Duration::ZERO,
            min_session: Duration::from_millis(1),
            max_session: Duration::from_secs(3600),
        }
    }

    /// A ConsumerProtocolSubscription v0 of `topics`.
    fn subscription_of(topics: &[&str]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i16(0);
        b.put_i32(topics.len() as i32);
        for t in topics {
            b.put_i16(t.len() as i16);
            b.put_slice(t.as_bytes());
        }
        b.put_i32(-1);
        b.freeze()
    }

    fn handed(id: &str, parts: &[i32]) -> HandedOver {
        HandedOver {
            id: id.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), subscription_of(&["t"]))],
            assignment: encode_assignment(&[("t".into(), parts.to_vec())]),
        }
    }

    /// A Stable classic group at generation 3: a owns 0,1 and b owns 2,3 of `t`.
    fn stable_classic() -> Group {
        let now = Instant::now();
        let mut g = Group::handed_over(
            "g",
            3,
            vec![handed("a", &[0, 1]), handed("b", &[2, 3])],
            timeouts(),
            now,
        );
        g.state = State::Stable;
        g
    }

    fn classic_join(id: &str) -> JoinRequest {
        JoinRequest {
            member_id: id.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), subscription_of(&["t"]))],
            version: 5,
        }
    }

    fn parts_of(bytes: &Bytes) -> BTreeSet<i32> {
        decode_assignment(bytes)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|(_, p)| p)
            .collect()
    }

    fn owned(g: &ConsumerGroup, id: &str) -> BTreeSet<i32> {
        g.members[id].assigned.get(&T).cloned().unwrap_or_default()
    }

    #[test]
    fn assignments_round_trip_and_garbage_is_refused() {
        let a = encode_assignment(&[("t".into(), vec![0, 2])]);
        assert_eq!(decode_assignment(&a), Some(vec![("t".into(), vec![0, 2])]));
        assert_eq!(decode_assignment(&Bytes::from_static(&[0])), None);
        assert_eq!(decode_assignment(&Bytes::new()), Some(Vec::new()));
    }

    #[test]
    fn an_upgraded_group_keeps_what_its_classic_members_own() {
        let g = ConsumerGroup::from_classic(&stable_classic(), catalog(), Instant::now())
            .expect("converts");
        assert_eq!(g.group_epoch, 3);
        assert_eq!(g.assignment_epoch, 3);
        assert_eq!(owned(&g, "a"), BTreeSet::from([0, 1]));
        assert_eq!(owned(&g, "b"), BTreeSet::from([2, 3]));
        assert!(g.members["a"].classic.is_some());
        assert_eq!(g.members["a"].epoch, 3);
        assert_eq!(g.state_name(), "Stable");
        // Its members' generation is their epoch: their commits are checked against it.
        assert_eq!(g.check_commit("a", 3), Ok(()));
        assert_eq!(
            g.check_commit("a", 2),
            Err(ResponseError::IllegalGeneration.code())
        );
    }

    #[test]
    fn only_a_group_of_decodable_consumers_is_upgraded() {
        let now = Instant::now();
        // A rebalance in progress does not stop it (the members' last assignments hold).
        let mut rebalancing = stable_classic();
        rebalancing.state = State::PreparingRebalance;
        assert!(ConsumerGroup::from_classic(&rebalancing, catalog(), now).is_some());
        let mut other = handed("x", &[]);
        other.protocol_type = "connect".into();
        let mut g = Group::handed_over("g", 1, vec![other], timeouts(), now);
        g.state = State::Stable;
        assert!(ConsumerGroup::from_classic(&g, catalog(), now).is_none());
        let mut garbled = handed("x", &[]);
        garbled.assignment = Bytes::from_static(&[0, 0, 0, 0, 0, 9]);
        let mut g = Group::handed_over("g", 1, vec![garbled], timeouts(), now);
        g.state = State::Stable;
        assert!(ConsumerGroup::from_classic(&g, catalog(), now).is_none());
    }

    #[test]
    fn classic_members_rebalance_through_rejoins_when_a_consumer_member_joins() {
        let now = Instant::now();
        let c = catalog();
        let mut g = ConsumerGroup::from_classic(&stable_classic(), c.clone(), now).unwrap();
        // A consumer member joins: a new epoch; it waits for partitions the others hold.
        let joined = g
            .heartbeat(consumer_join("c"), c.clone(), settings(), now)
            .unwrap();
        assert_eq!(joined.epoch, 4);
        assert!(joined.assignment.unwrap_or_default().is_empty());
        // The classic members are told to rebalance.
        assert_eq!(
            g.classic_heartbeat("a", 3, now),
            ResponseError::RebalanceInProgress.code()
        );
        assert_eq!(
            g.classic_heartbeat("zz", 3, now),
            ResponseError::UnknownMemberId.code()
        );
        // Each rejoins: answered at once with its new generation; SyncGroup gives it its
        // partitions, within its old ones (what it gave up goes to the new member).
        for (id, before) in [("a", [0, 1]), ("b", [2, 3])] {
            let j = g
                .classic_join(classic_join(id), c.clone(), 10, now)
                .unwrap();
            assert_eq!(j.generation, 4);
            assert_eq!(j.protocol, "range");
            assert_eq!(
                g.classic_sync(id, 3, now),
                Err(ResponseError::IllegalGeneration.code())
            );
            let mine = parts_of(&g.classic_sync(id, 4, now).unwrap());
            assert!(mine.is_subset(&BTreeSet::from(before)), "{id}: {mine:?}");
            assert_eq!(g.classic_heartbeat(id, 4, now), 0, "{id} is at its target");
        }
        // The consumer member now gets what the classic members released.
        let c_epoch = g.members["c"].epoch;
        let got = g
            .heartbeat(
                Heartbeat {
                    member_id: "c".into(),
                    epoch: c_epoch,
                    rebalance_timeout_ms: -1,
                    owned: Some(Assignment::new()),
                    version: 1,
                    ..Heartbeat::default()
                },
                c,
                settings(),
                now,
            )
            .unwrap();
        let c_parts: BTreeSet<i32> = got
            .assignment
            .and_then(|a| a.get(&T).cloned())
            .unwrap_or_default();
        assert!(!c_parts.is_empty());
        let (a, b) = (owned(&g, "a"), owned(&g, "b"));
        assert!(a.is_disjoint(&b) && a.is_disjoint(&c_parts) && b.is_disjoint(&c_parts));
        assert_eq!(
            a.len() + b.len() + c_parts.len(),
            4,
            "every partition owned"
        );
        assert_eq!(g.state_name(), "Stable");
    }

    /// A ConsumerProtocolSubscription v1 of `t` that says it owns `owned` (cooperative).
    fn cooperative(id: &str, owned: &BTreeSet<i32>) -> JoinRequest {
        use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as Owned;
        let sub = ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_static_str("t")])
            .with_owned_partitions(vec![Owned::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(owned.iter().copied().collect())]);
        let mut b = BytesMut::new();
        b.put_i16(1);
        sub.encode(&mut b, 1).expect("encodes");
        let mut j = classic_join(id);
        j.protocols = vec![("cooperative-sticky".into(), b.freeze())];
        j
    }

    #[test]
    fn a_cooperative_classic_member_keeps_what_it_revokes_until_it_rejoins_without_it() {
        let now = Instant::now();
        let c = catalog();
        let mut g = ConsumerGroup::from_classic(&stable_classic(), c.clone(), now).unwrap();
        g.heartbeat(consumer_join("c"), c.clone(), settings(), now)
            .unwrap();
        // The classic member whose target lost a partition to the new member.
        let (id, before) = [("a", BTreeSet::from([0, 1])), ("b", BTreeSet::from([2, 3]))]
            .into_iter()
            .find(|(id, before)| g.target[*id].get(&T).map_or(0, |p| p.len()) < before.len())
            .expect("one of them gives a partition up");
        let j = g
            .classic_join(cooperative(id, &before), c.clone(), 10, now)
            .unwrap();
        assert_eq!(j.generation, 3, "its epoch waits for the revocation");
        let kept = parts_of(&g.classic_sync(id, 3, now).unwrap());
        assert!(kept.len() < before.len() && kept.is_subset(&before));
        let revoked: BTreeSet<i32> = before.difference(&kept).copied().collect();
        // Nobody gets the revoked partition while it may still be consumed.
        let c_epoch = g.members["c"].epoch;
        let mut beat = consumer_join("c");
        beat.epoch = c_epoch;
        beat.rebalance_timeout_ms = -1;
        beat.subscribed_topic_names = None;
        g.heartbeat(beat.clone(), c.clone(), settings(), now)
            .unwrap();
        assert!(owned(&g, "c").is_disjoint(&revoked));
        assert_eq!(
            g.classic_heartbeat(id, 3, now),
            ResponseError::RebalanceInProgress.code()
        );
        // Rejoining without it, it moves to the new epoch and the partition is released.
        let j = g
            .classic_join(cooperative(id, &kept), c.clone(), 10, now)
            .unwrap();
        assert_eq!(j.generation, 4);
        let other = if id == "a" { "b" } else { "a" };
        let other_before = owned(&g, other);
        g.classic_join(cooperative(other, &other_before), c.clone(), 10, now)
            .unwrap();
        beat.epoch = g.members["c"].epoch;
        g.heartbeat(beat, c, settings(), now).unwrap();
        assert!(!owned(&g, "c").is_empty());
        let all: usize = ["a", "b", "c"].iter().map(|m| owned(&g, m).len()).sum();
        assert_eq!(all, 4);
    }

    #[test]
    fn a_static_classic_member_restarting_keeps_its_place_without_a_rebalance() {
        let now = Instant::now();
        let c = catalog();
        let mut a = handed("a", &[0, 1]);
        a.instance_id = Some("i".into());
        let mut classic =
            Group::handed_over("g", 3, vec![a, handed("b", &[2, 3])], timeouts(), now);
        classic.state = State::Stable;
        let mut g = ConsumerGroup::from_classic(&classic, c.clone(), now).unwrap();
        let epoch = g.group_epoch;
        let mut back = classic_join("");
        back.instance_id = Some("i".into());
        let j = g.classic_join(back, c.clone(), 10, now).unwrap();
        assert_ne!(j.member_id, "a");
        assert!(!g.members.contains_key("a"));
        assert_eq!(j.generation, 3);
        assert_eq!(g.group_epoch, epoch, "no rebalance");
        let mine = parts_of(&g.classic_sync(&j.member_id, 3, now).unwrap());
        assert_eq!(mine, BTreeSet::from([0, 1]));
        // The old member id is gone.
        assert_eq!(
            g.classic_heartbeat("a", 3, now),
            ResponseError::UnknownMemberId.code()
        );
        assert_eq!(g.classic_heartbeat(&j.member_id, 3, now), 0);
    }

    #[test]
    fn a_classic_member_that_does_not_rejoin_in_its_rebalance_timeout_is_removed() {
        let now = Instant::now();
        let c = catalog();
        let mut g = ConsumerGroup::from_classic(&stable_classic(), c.clone(), now).unwrap();
        g.heartbeat(consumer_join("c"), c.clone(), settings(), now)
            .unwrap();
        assert_eq!(
            g.classic_heartbeat("a", 3, now),
            ResponseError::RebalanceInProgress.code()
        );
        // b rejoins in time; both keep heartbeating, a never rejoins (30 s timeout).
        let b = g.classic_join(classic_join("b"), c, 10, now).unwrap();
        let later = now + Duration::from_secs(31);
        g.classic_heartbeat("a", 3, later);
        g.classic_heartbeat("b", b.generation, later);
        g.tick(settings(), later);
        assert!(!g.members.contains_key("a"));
        assert!(g.members.contains_key("b"));
    }

    #[test]
    fn a_new_classic_member_joins_a_consumer_group() {
        let now = Instant::now();
        let c = catalog();
        let mut g = ConsumerGroup::new("g");
        let first = g
            .heartbeat(consumer_join("c"), c.clone(), settings(), now)
            .unwrap();
        assert_eq!(first.epoch, 1);
        let j = g
            .classic_join(classic_join(""), c.clone(), 10, now)
            .unwrap();
        assert!(!j.member_id.is_empty());
        assert_eq!(j.generation, 2);
        // Everything is still c's: the classic member waits, told to rejoin.
        assert!(parts_of(&g.classic_sync(&j.member_id, 2, now).unwrap()).is_empty());
        assert_eq!(
            g.classic_heartbeat(&j.member_id, 2, now),
            ResponseError::RebalanceInProgress.code()
        );
        // A classic join to a full group is refused.
        assert_eq!(
            g.classic_join(classic_join(""), c, 2, now),
            Err(ResponseError::GroupMaxSizeReached.code())
        );
    }

    #[test]
    fn the_last_consumer_member_leaving_leaves_a_classic_group_to_rejoin() {
        let now = Instant::now();
        let c = catalog();
        let mut g = ConsumerGroup::from_classic(&stable_classic(), c.clone(), now).unwrap();
        g.heartbeat(consumer_join("c"), c.clone(), settings(), now)
            .unwrap();
        assert!(!g.only_classic());
        let mut leave = consumer_join("c");
        leave.epoch = LEAVE_EPOCH;
        g.heartbeat(leave, c, settings(), now).unwrap();
        assert!(g.only_classic());
        let classic = g.to_classic(timeouts(), now);
        assert_eq!(classic.generation, g.group_epoch);
        assert_eq!(classic.state, State::PreparingRebalance);
        assert_eq!(classic.protocol.as_deref(), Some("range"));
        let mut owned_by_all = BTreeSet::new();
        for m in classic.members.values() {
            owned_by_all.extend(parts_of(&m.assignment));
        }
        assert_eq!(owned_by_all, BTreeSet::from([0, 1, 2, 3]));
        // A classic leave removes the member; an unknown one is refused.
        assert_eq!(g.classic_leave("a", now), 0);
        assert_eq!(
            g.classic_leave("a", now),
            ResponseError::UnknownMemberId.code()
        );
    }
}
