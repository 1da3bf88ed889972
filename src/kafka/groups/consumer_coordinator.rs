//! The coordinator's side of consumer-protocol groups (KIP-848): heartbeats and
//! descriptions, the offset checks of their members, their place in listings, and how they
//! coexist with classic groups, as Kafka 4 with `group.consumer.migration.policy`
//! (`group_consumer_migration_policy`; the translation itself is `migration.rs`):
//!
//! - one group id is a classic group or a consumer group; committed offsets belong to the
//!   id, whichever kind it is, and survive a change of kind;
//! - a consumer member joining an id whose classic group is empty (or that has only
//!   committed offsets) makes it a consumer group; one joining a classic group with members
//!   converts it (online upgrade, policy `bidirectional` or `upgrade`), or gets
//!   GROUP_ID_NOT_FOUND ("Group … is not a consumer group.") when the policy or Kafka's
//!   checks refuse (another protocol type, the group full, an assignment that does not
//!   decode);
//! - a classic JoinGroup, SyncGroup, Heartbeat or LeaveGroup for a consumer group with
//!   members is served by it as a classic member's (INCONSISTENT_GROUP_PROTOCOL for the
//!   JoinGroup when the policy is `disabled`); for an empty one a JoinGroup makes the id a
//!   classic group again;
//! - a consumer group whose last consumer-protocol member left, with classic members
//!   still in it, becomes a classic group (online downgrade, `bidirectional` or
//!   `downgrade`);
//! - DescribeGroups answers a consumer group with GROUP_ID_NOT_FOUND ("Group … is not a
//!   classic group.", state Dead), as Kafka 4; ConsumerGroupDescribe describes it.
//!
//! Runs on the group's coordinator shard, inside `Coordinator` (`mod.rs`).

use std::sync::Arc;
use std::time::Instant;

use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment as DescribedAssignment, DescribedGroup, Member, TopicPartitions,
};
use kafka_protocol::messages::{GroupId, JoinGroupResponse, SyncGroupResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::assignor::Assignment;
use super::consumer::{self, ConsumerGroup, Refusal};
use super::group::JoinRequest;
use super::migration::CONSUMER_PROTOCOL_TYPE;
use super::{Coordinator, GroupSummary, Reply};
use crate::catalog::CatalogState;
use crate::kafka::offsets_topic::TopicRecord;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

impl Coordinator {
    /// Whether `id` is a consumer-protocol group with members.
    pub(super) fn consumer_group_active(&self, id: &str) -> bool {
        self.consumer_groups
            .borrow()
            .get(id)
            .is_some_and(|g| !g.members.is_empty())
    }

    pub(super) fn consumer_heartbeat(
        &self,
        group: &str,
        heartbeat: consumer::Heartbeat,
        catalog: Arc<CatalogState>,
        now: Instant,
    ) -> Reply {
        let interval = self.consumer_settings.heartbeat_interval.as_millis() as i32;
        let settings = self.consumer_settings;
        let upgraded = {
            let groups = self.groups.borrow();
            match groups.get(group) {
                Some(g) if !g.members.is_empty() => {
                    // Online upgrade: Kafka's checks (policy, room for one more member,
                    // every member a consumer whose assignment decodes).
                    let converted = (settings.upgrade
                        && heartbeat.epoch == 0
                        && g.members.len() < settings.max_size)
                        .then(|| ConsumerGroup::from_classic(g, catalog.clone(), now))
                        .flatten();
                    let Some(converted) = converted else {
                        let refusal = Refusal {
                            code: ResponseError::GroupIdNotFound.code(),
                            message: Some(format!("Group {group} is not a consumer group.")),
                        };
                        return Reply::ConsumerHeartbeat(Err(refusal), interval);
                    };
                    Some(converted)
                }
                _ => None,
            }
        };
        if let Some(converted) = upgraded {
            if let Some(g) = self.groups.borrow_mut().get_mut(group) {
                g.abort_waiting();
            }
            log::info!(
                "group {group}: upgraded from the classic protocol ({} classic members)",
                converted.members.len()
            );
            self.consumer_groups
                .borrow_mut()
                .insert(group.to_owned(), converted);
        }
        // An empty classic group (or only its offsets) becomes a consumer group; its
        // metadata leaves `__consumer_offsets` (a tombstone), as Kafka's conversion does.
        if self.groups.borrow_mut().remove(group).is_some()
            && self
                .recorded_generation
                .borrow_mut()
                .remove(group)
                .is_some()
        {
            self.queue_topic(vec![TopicRecord::Group {
                group: group.to_owned(),
                value: None,
            }]);
        }
        let mut groups = self.consumer_groups.borrow_mut();
        let g = groups
            .entry(group.to_owned())
            .or_insert_with(|| ConsumerGroup::new(group));
        let leaving = heartbeat.epoch < 0;
        let answer = g.heartbeat(heartbeat, catalog, self.consumer_settings, now);
        if g.members.is_empty() && g.group_epoch == 0 {
            // A refused first join leaves no group behind.
            groups.remove(group);
        }
        drop(groups);
        // The clock sleeps while no group has members (cheap when it is awake).
        self.clock_wake.notify();
        if leaving {
            self.maybe_downgrade(group, now);
        }
        Reply::ConsumerHeartbeat(answer, interval)
    }

    /// Online downgrade: a consumer group whose members are all classic (its last
    /// consumer-protocol member left) becomes a classic group, when the policy allows.
    fn maybe_downgrade(&self, group: &str, now: Instant) {
        if !self.consumer_settings.downgrade {
            return;
        }
        let classic = {
            let groups = self.consumer_groups.borrow();
            match groups.get(group) {
                Some(g) if g.only_classic() => g.to_classic(self.timeouts, now),
                _ => return,
            }
        };
        log::info!(
            "group {group}: downgraded to the classic protocol ({} members rejoin)",
            classic.members.len()
        );
        self.consumer_groups.borrow_mut().remove(group);
        self.groups.borrow_mut().insert(group.to_owned(), classic);
    }

    fn refused_join(code: i16, member_id: &str) -> Reply {
        Reply::Join(
            JoinGroupResponse::default()
                .with_error_code(code)
                .with_generation_id(-1)
                .with_protocol_name(Some(s("")))
                .with_leader(s(""))
                .with_member_id(s(member_id)),
        )
    }

    /// JoinGroup of a classic member into a consumer group with members: answered at once
    /// with its member epoch as generation and no leader (`migration.rs`);
    /// INCONSISTENT_GROUP_PROTOCOL when the migration policy is `disabled`.
    pub(super) fn classic_join_consumer_group(
        &self,
        group: &str,
        join: JoinRequest,
        catalog: Arc<CatalogState>,
        now: Instant,
    ) -> Reply {
        let settings = self.consumer_settings;
        let member_id = join.member_id.clone();
        if !settings.upgrade && !settings.downgrade {
            return Self::refused_join(ResponseError::InconsistentGroupProtocol.code(), &member_id);
        }
        let t = self.timeouts;
        if join.session_timeout < t.min_session || join.session_timeout > t.max_session {
            return Self::refused_join(ResponseError::InvalidSessionTimeout.code(), &member_id);
        }
        let mut groups = self.consumer_groups.borrow_mut();
        let Some(g) = groups.get_mut(group) else {
            return Self::refused_join(ResponseError::UnknownMemberId.code(), &member_id);
        };
        let joined = g.classic_join(join, catalog, settings.max_size, now);
        self.clock_wake.notify();
        match joined {
            Ok(joined) => Reply::Join(
                JoinGroupResponse::default()
                    .with_generation_id(joined.generation)
                    .with_protocol_type(Some(s(CONSUMER_PROTOCOL_TYPE)))
                    .with_protocol_name(Some(s(&joined.protocol)))
                    .with_leader(s(""))
                    .with_member_id(s(&joined.member_id)),
            ),
            Err(code) => Self::refused_join(code, &member_id),
        }
    }

    /// SyncGroup of a classic member of a consumer group: its partitions.
    pub(super) fn classic_sync_consumer_group(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
        now: Instant,
    ) -> Reply {
        let mut groups = self.consumer_groups.borrow_mut();
        let Some(g) = groups.get_mut(group) else {
            return Reply::Sync(
                SyncGroupResponse::default().with_error_code(ResponseError::UnknownMemberId.code()),
            );
        };
        let protocol = g
            .members
            .get(member_id)
            .and_then(|m| m.classic.as_ref())
            .and_then(|c| c.protocols.first())
            .map(|(n, _)| n.clone());
        Reply::Sync(match g.classic_sync(member_id, generation, now) {
            Ok(assignment) => SyncGroupResponse::default()
                .with_protocol_type(Some(s(CONSUMER_PROTOCOL_TYPE)))
                .with_protocol_name(protocol.as_deref().map(s))
                .with_assignment(assignment),
            Err(code) => SyncGroupResponse::default().with_error_code(code),
        })
    }

    pub(super) fn classic_heartbeat_consumer_group(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
        now: Instant,
    ) -> i16 {
        self.consumer_groups
            .borrow_mut()
            .get_mut(group)
            .map_or(ResponseError::UnknownMemberId.code(), |g| {
                g.classic_heartbeat(member_id, generation, now)
            })
    }

    /// LeaveGroup of classic members of a consumer group ((member id, instance id) pairs;
    /// a static one may be named by its instance id alone).
    pub(super) fn classic_leave_consumer_group(
        &self,
        group: &str,
        members: &[(String, Option<String>)],
        now: Instant,
    ) -> Vec<i16> {
        let codes = {
            let mut groups = self.consumer_groups.borrow_mut();
            let Some(g) = groups.get_mut(group) else {
                return vec![ResponseError::UnknownMemberId.code(); members.len()];
            };
            members
                .iter()
                .map(|(m, instance)| {
                    let id = match (m.is_empty(), instance) {
                        (true, Some(i)) => g.statics.get(i).cloned().unwrap_or_default(),
                        _ => m.clone(),
                    };
                    g.classic_leave(&id, now)
                })
                .collect()
        };
        self.maybe_downgrade(group, now);
        codes
    }

    /// Expires members of consumer groups; forgets empty ones without offsets.
    pub(super) fn tick_consumer_groups(&self, now: Instant) {
        let mut changed = Vec::new();
        {
            let mut groups = self.consumer_groups.borrow_mut();
            for g in groups.values_mut() {
                let before = g.members.len();
                g.tick(self.consumer_settings, now);
                if g.members.len() != before {
                    changed.push(g.id.clone());
                }
            }
            let offsets = self.offsets.borrow();
            groups.retain(|id, g| !g.members.is_empty() || offsets.contains_key(id));
        }
        for id in changed {
            self.maybe_downgrade(&id, now);
        }
    }

    /// The check of an OffsetCommit against a consumer group (`None`: `group` is not one).
    pub(super) fn consumer_check_commit(
        &self,
        group: &str,
        member_id: &str,
        epoch: i32,
    ) -> Option<Result<(), i16>> {
        self.consumer_groups
            .borrow()
            .get(group)
            .map(|g| g.check_commit(member_id, epoch))
    }

    /// Topics the members of consumer group `group` subscribe to.
    pub(super) fn consumer_subscribed_topics(&self, group: &str) -> Vec<String> {
        self.consumer_groups
            .borrow()
            .get(group)
            .map(|g| g.subscribed_topics().into_iter().collect())
            .unwrap_or_default()
    }

    pub(super) fn consumer_summary(&self, id: &str) -> GroupSummary {
        let groups = self.consumer_groups.borrow();
        let g = groups.get(id);
        GroupSummary {
            group: id.to_owned(),
            state: g.map(ConsumerGroup::state_name).unwrap_or("Empty"),
            protocol_type: "consumer".to_owned(),
            members: g.map(|g| g.members.len()).unwrap_or(0),
            group_type: "consumer",
        }
    }

    /// ConsumerGroupDescribe of one group: GROUP_ID_NOT_FOUND for an id that is not a
    /// consumer group (as Kafka: "Group … not found." or "… is not a consumer group.").
    pub(super) fn consumer_describe(&self, id: &str) -> DescribedGroup {
        let base = DescribedGroup::default().with_group_id(GroupId(s(id)));
        let groups = self.consumer_groups.borrow();
        let Some(g) = groups.get(id) else {
            let classic = self
                .groups
                .borrow()
                .get(id)
                .is_some_and(|g| !g.members.is_empty())
                || self.offsets.borrow().contains_key(id);
            let message = if classic {
                format!("Group {id} is not a consumer group.")
            } else {
                format!("Group {id} not found.")
            };
            return base
                .with_group_state(s("Dead"))
                .with_error_code(ResponseError::GroupIdNotFound.code())
                .with_error_message(Some(s(&message)));
        };
        let described = |a: &Assignment| {
            DescribedAssignment::default().with_topic_partitions(
                g.named(a)
                    .into_iter()
                    .map(|(id, name, parts)| {
                        TopicPartitions::default()
                            .with_topic_id(uuid::Uuid::from_bytes(id))
                            .with_topic_name(TopicName(s(&name)))
                            .with_partitions(parts)
                    })
                    .collect(),
            )
        };
        let empty = Assignment::new();
        let members = g
            .members
            .values()
            .map(|m| {
                Member::default()
                    .with_member_id(s(&m.id))
                    .with_instance_id(m.instance_id.as_deref().map(s))
                    .with_rack_id(m.rack_id.as_deref().map(s))
                    .with_member_epoch(m.epoch)
                    .with_client_id(s(&m.client_id))
                    .with_client_host(s(&m.client_host))
                    .with_subscribed_topic_names(
                        m.subscribed_names.iter().map(|n| TopicName(s(n))).collect(),
                    )
                    .with_subscribed_topic_regex(m.subscribed_regex.as_deref().map(s))
                    .with_assignment(described(&m.assigned))
                    .with_target_assignment(described(g.target.get(&m.id).unwrap_or(&empty)))
                    // KIP-1099: 0 a classic member (online migration), 1 a consumer one.
                    .with_member_type(if m.classic.is_some() { 0 } else { 1 })
            })
            .collect();
        base.with_group_state(s(g.state_name()))
            .with_group_epoch(g.group_epoch)
            .with_assignment_epoch(g.assignment_epoch)
            .with_assignor_name(s(g.assignor.name()))
            .with_members(members)
    }
}
