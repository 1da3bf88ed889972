//! One consumer group of the consumer group protocol (KIP-848, `group.protocol=consumer`):
//! members, epochs, the target assignment and each member's reconciliation towards it.
//!
//! Lives on the group's coordinator shard only, inside `Coordinator`, beside the classic
//! groups (`group.rs`); every method is synchronous, the clock and the catalog are passed
//! in, so the whole state machine is unit-tested here.
//!
//! The model, as Kafka 4 has it:
//! - the **group epoch** moves on every change that calls for a new assignment: a member
//!   joins or leaves, a subscription or the assignor changes, a subscribed topic is created,
//!   deleted or gets partitions;
//! - the **target assignment** is computed by the group's assignor (`assignor.rs`) for the
//!   new group epoch, which becomes the **assignment epoch**;
//! - each member converges on its target one heartbeat at a time (`reconcile`): partitions
//!   it must give up are revoked first (its epoch stays until it reports them gone: state
//!   `UnrevokedPartitions`); it then moves to the assignment epoch with the partitions of
//!   its target that no other member still holds; one still held elsewhere is handed over
//!   only once its old owner has revoked it (state `UnreleasedPartitions` until then). So a
//!   partition never has two owners.
//!
//! A member that stops heartbeating for the session timeout is removed; one that does not
//! revoke within its rebalance timeout is fenced. A static member (`instance_id`) leaving
//! with epoch -2 keeps its assignment for the session timeout, and a new member with the
//! same instance id takes it over.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;

use super::assignor::{self, Assignment, Assignor, MemberSpec, TopicId, TopicInfo};
use crate::catalog::CatalogState;

/// Epoch -1 in a heartbeat: the member leaves.
pub const LEAVE_EPOCH: i32 = -1;
/// Epoch -2 in a heartbeat: a static member leaves for now and will come back.
pub const STATIC_LEAVE_EPOCH: i32 = -2;

/// Coordinator-wide settings of consumer groups (`group.consumer.*`).
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub session_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub max_size: usize,
    /// `group.consumer.migration.policy` allows a classic group with members to become a
    /// consumer group (and classic members to join one).
    pub upgrade: bool,
    /// … and a consumer group left with classic members only to become classic again.
    pub downgrade: bool,
}

/// What a classic member of a consumer group (online migration) keeps from its JoinGroup:
/// it speaks JoinGroup/SyncGroup/Heartbeat, its generation is its member epoch.
#[derive(Debug, Clone)]
pub struct ClassicMember {
    pub session_timeout: Duration,
    pub protocol_type: String,
    /// (protocol name, ConsumerProtocolSubscription) as it offered them.
    pub protocols: Vec<(String, bytes::Bytes)>,
}

/// Where a member is on its way to its target assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// At the assignment epoch with its whole target.
    Stable,
    /// It must revoke `pending_revocation` before it gets anything new.
    UnrevokedPartitions,
    /// At the assignment epoch, waiting for partitions other members still hold.
    UnreleasedPartitions,
}

pub struct ConsumerMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub epoch: i32,
    pub(super) previous_epoch: i32,
    pub state: MemberState,
    pub subscribed_names: Vec<String>,
    pub subscribed_regex: Option<String>,
    pub(super) regex: Option<regex::Regex>,
    /// Its subscribed topic names (names and regex matches) as of catalog version
    /// `resolved_at` (`None`: to be resolved), so a regex is matched against the catalog's
    /// topics once per catalog version, not on every heartbeat.
    pub(super) resolved: BTreeSet<String>,
    pub(super) resolved_at: Option<u64>,
    pub server_assignor: Option<String>,
    pub rebalance_timeout: Duration,
    /// The partitions it owns now.
    pub assigned: Assignment,
    /// Partitions it must revoke (still its own until it reports them gone).
    pub pending_revocation: Assignment,
    pub(super) last_heartbeat: Instant,
    pub(super) revoke_deadline: Option<Instant>,
    /// Set for a member of the classic protocol (`classic_*` methods).
    pub classic: Option<ClassicMember>,
}

impl ConsumerMember {
    /// A member that has just joined: epoch 0, nothing subscribed or assigned yet.
    fn fresh(id: &str, rebalance_timeout: Duration, now: Instant) -> ConsumerMember {
        ConsumerMember {
            id: id.to_owned(),
            instance_id: None,
            rack_id: None,
            client_id: String::new(),
            client_host: String::new(),
            epoch: 0,
            previous_epoch: -1,
            state: MemberState::Stable,
            subscribed_names: Vec::new(),
            subscribed_regex: None,
            regex: None,
            resolved: BTreeSet::new(),
            resolved_at: None,
            server_assignor: None,
            rebalance_timeout,
            assigned: Assignment::new(),
            pending_revocation: Assignment::new(),
            last_heartbeat: now,
            revoke_deadline: None,
            classic: None,
        }
    }

    /// A classic member (online migration, `migration.rs`), with no partitions yet.
    pub(super) fn classic(id: &str, classic: ClassicMember, now: Instant) -> ConsumerMember {
        ConsumerMember {
            classic: Some(classic),
            ..ConsumerMember::fresh(id, Duration::ZERO, now)
        }
    }

    /// Resolves the topic names this member subscribes to against `catalog`: its names and
    /// the regex's matches among the catalog's (non-internal) topics.
    pub(super) fn resolve(&mut self, catalog: &CatalogState) {
        if self.resolved_at == Some(catalog.version) {
            return;
        }
        let mut out: BTreeSet<String> = self.subscribed_names.iter().cloned().collect();
        if let Some(re) = &self.regex {
            out.extend(
                catalog
                    .topics
                    .keys()
                    .filter(|t| !crate::catalog::is_internal_topic(t) && re.is_match(t))
                    .cloned(),
            );
        }
        self.resolved = out;
        self.resolved_at = Some(catalog.version);
    }

    /// The topic names it subscribes to, as last resolved.
    fn topics(&self) -> &BTreeSet<String> {
        &self.resolved
    }
}

/// The parts of a ConsumerGroupHeartbeat the state machine needs (null fields: unchanged).
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    pub member_id: String,
    pub epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub subscribed_topic_names: Option<Vec<String>>,
    pub subscribed_topic_regex: Option<String>,
    pub server_assignor: Option<String>,
    pub owned: Option<Assignment>,
    pub client_id: String,
    pub client_host: String,
    pub version: i16,
}

/// A heartbeat's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub member_id: String,
    pub epoch: i32,
    /// Sent when it changed, and on a join or a full request.
    pub assignment: Option<Assignment>,
}

/// A refusal: the error code and its message.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: i16,
    pub message: Option<String>,
}

fn refuse(e: ResponseError, message: impl Into<String>) -> Refusal {
    Refusal {
        code: e.code(),
        message: Some(message.into()),
    }
}

/// A member id for a v0 request that came without one (v1+ clients make their own).
pub(super) fn new_member_id(group: &str) -> String {
    let id = crate::catalog::new_topic_id(group);
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    hex
}

/// Whether `a` holds any partition of `b`.
fn overlaps(a: &Assignment, b: &Assignment) -> bool {
    b.iter()
        .any(|(t, parts)| a.get(t).is_some_and(|mine| !mine.is_disjoint(parts)))
}

/// Whether every partition of `a` is in `b`.
fn subset(a: &Assignment, b: &Assignment) -> bool {
    a.iter().all(|(t, parts)| {
        parts.is_empty() || b.get(t).is_some_and(|theirs| parts.is_subset(theirs))
    })
}

pub(super) fn normalized(mut a: Assignment) -> Assignment {
    a.retain(|_, parts| !parts.is_empty());
    a
}

pub struct ConsumerGroup {
    pub id: String,
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub members: BTreeMap<String, ConsumerMember>,
    /// instance id → member id.
    pub(super) statics: HashMap<String, String>,
    /// Target assignment of the assignment epoch, by member id.
    pub target: BTreeMap<String, Assignment>,
    /// Who holds each partition now (assigned or pending revocation).
    pub(super) owners: HashMap<(TopicId, i32), String>,
    /// The subscribed topics as of the last group epoch.
    pub(super) metadata: BTreeMap<String, TopicInfo>,
    /// The newest catalog a heartbeat brought (replicas on other shards may lag behind it).
    pub(super) catalog: Arc<CatalogState>,
    pub assignor: Assignor,
}

impl ConsumerGroup {
    pub fn new(id: &str) -> ConsumerGroup {
        ConsumerGroup {
            id: id.to_owned(),
            group_epoch: 0,
            assignment_epoch: 0,
            members: BTreeMap::new(),
            statics: HashMap::new(),
            target: BTreeMap::new(),
            owners: HashMap::new(),
            metadata: BTreeMap::new(),
            catalog: Arc::new(CatalogState::default()),
            assignor: Assignor::Uniform,
        }
    }

    /// Kafka's consumer group states: Empty, Assigning (a new target is due), Reconciling
    /// (members are moving to it), Stable.
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.group_epoch > self.assignment_epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| m.epoch != self.assignment_epoch || m.state != MemberState::Stable)
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    /// The topics some member subscribes to (OffsetDelete refuses their offsets).
    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members
            .values()
            .flat_map(|m| m.topics().iter().cloned())
            .collect()
    }

    /// The name of a topic id, as of the newest catalog the group saw.
    pub fn topic_name(&self, id: &TopicId) -> Option<String> {
        self.catalog.topic_by_id(id).map(|t| t.name.clone())
    }

    /// Handles one ConsumerGroupHeartbeat.
    pub fn heartbeat(
        &mut self,
        mut hb: Heartbeat,
        catalog: Arc<CatalogState>,
        settings: Settings,
        now: Instant,
    ) -> Result<Answer, Refusal> {
        validate(&hb)?;
        if catalog.version >= self.catalog.version {
            self.catalog = catalog;
        }
        if hb.epoch == LEAVE_EPOCH || hb.epoch == STATIC_LEAVE_EPOCH {
            return self.leave(&hb, now);
        }
        if hb.member_id.is_empty() {
            hb.member_id = new_member_id(&self.id);
        }
        let full = hb.rebalance_timeout_ms != -1
            && (hb.subscribed_topic_names.is_some() || hb.subscribed_topic_regex.is_some())
            && hb.owned.is_some();
        let regex = match &hb.subscribed_topic_regex {
            Some(r) if !r.is_empty() => {
                // Checked alone first: wrapped, an unbalanced `)` could still compile.
                let compiled =
                    regex::Regex::new(r).and_then(|_| regex::Regex::new(&format!("^(?:{r})$")));
                Some(compiled.map_err(|e| {
                    refuse(
                        ResponseError::InvalidRegularExpression,
                        format!(
                            "SubscribedTopicRegex `{r}` is not a valid regular expression: {e}"
                        ),
                    )
                })?)
            }
            _ => None,
        };
        let before = self.members.get(&hb.member_id).map(|m| m.assigned.clone());
        let mut changed = false;
        if hb.epoch == 0 {
            changed = self.join(&hb, settings, now)?;
        } else {
            self.check_epoch(&hb)?;
        }
        let Some(m) = self.members.get_mut(&hb.member_id) else {
            return Err(refuse(ResponseError::UnknownMemberId, "unknown member"));
        };
        m.last_heartbeat = now;
        m.client_id = hb.client_id.clone();
        m.client_host = hb.client_host.clone();
        if hb.rack_id.is_some() {
            m.rack_id = hb.rack_id.clone();
        }
        if hb.rebalance_timeout_ms >= 0 {
            m.rebalance_timeout = Duration::from_millis(hb.rebalance_timeout_ms as u64);
        }
        if let Some(names) = hb.subscribed_topic_names.take() {
            let mut names = names;
            names.sort();
            names.dedup();
            if names != m.subscribed_names {
                m.subscribed_names = names;
                m.resolved_at = None;
                changed = true;
            }
        }
        if let Some(r) = hb.subscribed_topic_regex.take() {
            let r = (!r.is_empty()).then_some(r);
            if r != m.subscribed_regex {
                m.subscribed_regex = r;
                m.regex = regex;
                m.resolved_at = None;
                changed = true;
            }
        }
        if let Some(a) = hb.server_assignor.take() {
            if m.server_assignor.as_deref() != Some(a.as_str()) {
                m.server_assignor = Some(a);
                changed = true;
            }
        }
        if changed {
            self.group_epoch += 1;
        }
        self.refresh(now);
        self.reconcile(&hb.member_id, hb.owned.as_ref(), now);
        let Some(m) = self.members.get(&hb.member_id) else {
            return Err(refuse(ResponseError::UnknownMemberId, "unknown member"));
        };
        let send = hb.epoch == 0 || full || before.as_ref() != Some(&m.assigned);
        Ok(Answer {
            member_id: m.id.clone(),
            epoch: m.epoch,
            assignment: send.then(|| m.assigned.clone()),
        })
    }

    /// A member joining (epoch 0): a new member (true: the group needs a new assignment),
    /// a known one starting over, or a static member taking over the assignment of its
    /// instance's previous member.
    fn join(&mut self, hb: &Heartbeat, settings: Settings, now: Instant) -> Result<bool, Refusal> {
        if let Some(instance) = &hb.instance_id {
            if let Some(old_id) = self.statics.get(instance).cloned() {
                if old_id != hb.member_id {
                    match self.members.get(&old_id).map(|m| m.epoch) {
                        Some(STATIC_LEAVE_EPOCH) => {
                            self.replace_static(&old_id, hb, now);
                            return Ok(false);
                        }
                        Some(_) => {
                            return Err(refuse(
                                ResponseError::UnreleasedInstanceId,
                                format!(
                                    "Static member {old_id} with instance id {instance} is \
                                     still in the group"
                                ),
                            ))
                        }
                        // Not a member any more: the instance id is free.
                        None => {
                            self.statics.remove(instance);
                        }
                    }
                }
            }
        }
        if let Some(m) = self.members.get_mut(&hb.member_id) {
            // A known member starting over (it lost its state): it keeps its place.
            if m.epoch == STATIC_LEAVE_EPOCH {
                m.epoch = m.previous_epoch;
            }
            return Ok(false);
        }
        if self.members.len() >= settings.max_size {
            return Err(refuse(
                ResponseError::GroupMaxSizeReached,
                format!(
                    "The consumer group has reached its maximum capacity of {} members",
                    settings.max_size
                ),
            ));
        }
        if hb.rebalance_timeout_ms < 0 {
            return Err(refuse(
                ResponseError::InvalidRequest,
                "RebalanceTimeoutMs must be provided when joining",
            ));
        }
        let rebalance_timeout = Duration::from_millis(hb.rebalance_timeout_ms.max(0) as u64);
        let member = ConsumerMember {
            instance_id: hb.instance_id.clone(),
            rack_id: hb.rack_id.clone(),
            client_id: hb.client_id.clone(),
            client_host: hb.client_host.clone(),
            ..ConsumerMember::fresh(&hb.member_id, rebalance_timeout, now)
        };
        if let Some(instance) = &hb.instance_id {
            self.statics.insert(instance.clone(), hb.member_id.clone());
        }
        self.members.insert(hb.member_id.clone(), member);
        Ok(true)
    }

    /// The new member of a static instance takes over its previous member: id, epoch,
    /// partitions and target move to it; no new assignment is needed.
    fn replace_static(&mut self, old_id: &str, hb: &Heartbeat, now: Instant) {
        let Some(mut m) = self.members.remove(old_id) else {
            return;
        };
        m.id = hb.member_id.clone();
        if m.epoch == STATIC_LEAVE_EPOCH {
            m.epoch = m.previous_epoch;
        }
        m.last_heartbeat = now;
        if let Some(t) = self.target.remove(old_id) {
            self.target.insert(m.id.clone(), t);
        }
        for owner in self.owners.values_mut() {
            if owner == old_id {
                *owner = m.id.clone();
            }
        }
        if let Some(instance) = &hb.instance_id {
            self.statics.insert(instance.clone(), m.id.clone());
        }
        self.members.insert(m.id.clone(), m);
    }

    /// Kafka's member epoch check: a newer epoch than the member's is fenced; an older one
    /// only when it is the previous epoch and the member owns no more than it is given
    /// (the answer to it was lost).
    fn check_epoch(&self, hb: &Heartbeat) -> Result<(), Refusal> {
        let Some(m) = self.members.get(&hb.member_id) else {
            return Err(refuse(
                ResponseError::UnknownMemberId,
                format!(
                    "Member {} is not a member of group {}",
                    hb.member_id, self.id
                ),
            ));
        };
        if let (Some(instance), Some(mine)) = (&hb.instance_id, &m.instance_id) {
            if instance != mine {
                return Err(refuse(
                    ResponseError::FencedInstanceId,
                    "the instance id does not match the member's",
                ));
            }
        }
        let fenced = || {
            refuse(
                ResponseError::FencedMemberEpoch,
                format!(
                    "The consumer group member has a member epoch ({}) different from the one \
                     known by the group coordinator ({})",
                    hb.epoch, m.epoch
                ),
            )
        };
        if hb.epoch > m.epoch {
            return Err(fenced());
        }
        if hb.epoch < m.epoch {
            let lost_answer = hb.epoch == m.previous_epoch
                && hb.owned.as_ref().is_none_or(|o| subset(o, &m.assigned));
            if !lost_answer {
                return Err(fenced());
            }
        }
        Ok(())
    }

    fn leave(&mut self, hb: &Heartbeat, now: Instant) -> Result<Answer, Refusal> {
        let id = match (&hb.instance_id, hb.member_id.is_empty()) {
            (Some(instance), _) => match self.statics.get(instance) {
                Some(current) if hb.member_id.is_empty() || *current == hb.member_id => {
                    current.clone()
                }
                Some(_) => {
                    return Err(refuse(
                        ResponseError::FencedInstanceId,
                        "another member holds this instance id",
                    ))
                }
                None => {
                    return Err(refuse(
                        ResponseError::UnknownMemberId,
                        "unknown static member",
                    ))
                }
            },
            (None, _) => hb.member_id.clone(),
        };
        if !self.members.contains_key(&id) {
            return Err(refuse(
                ResponseError::UnknownMemberId,
                format!("Member {id} is not a member of group {}", self.id),
            ));
        }
        if hb.epoch == STATIC_LEAVE_EPOCH {
            if let Some(m) = self.members.get_mut(&id) {
                // Keeps its partitions for the session timeout; its instance comes back.
                if m.epoch != STATIC_LEAVE_EPOCH {
                    m.previous_epoch = m.epoch;
                }
                m.epoch = STATIC_LEAVE_EPOCH;
                m.last_heartbeat = now;
            }
        } else {
            self.remove_member(&id, now);
        }
        Ok(Answer {
            member_id: id,
            epoch: hb.epoch,
            assignment: None,
        })
    }

    /// Removes a member; its partitions are free and a new assignment is computed.
    pub fn remove_member(&mut self, id: &str, now: Instant) {
        let Some(m) = self.members.remove(id) else {
            return;
        };
        if let Some(instance) = &m.instance_id {
            if self.statics.get(instance).map(String::as_str) == Some(id) {
                self.statics.remove(instance);
            }
        }
        self.owners.retain(|_, owner| owner != id);
        self.target.remove(id);
        self.group_epoch += 1;
        self.refresh(now);
    }

    /// Moves the group epoch when the subscribed topics changed in the catalog, and
    /// computes the target assignment when the group epoch moved past it.
    pub(super) fn refresh(&mut self, _now: Instant) {
        for m in self.members.values_mut() {
            m.resolve(&self.catalog);
        }
        let metadata = self.topic_metadata();
        if metadata != self.metadata {
            self.metadata = metadata;
            // One new epoch covers this and any other change it comes with.
            if !self.members.is_empty() && self.group_epoch == self.assignment_epoch {
                self.group_epoch += 1;
            }
        }
        let assignor = self.chosen_assignor();
        if assignor != self.assignor {
            self.assignor = assignor;
        }
        if self.group_epoch <= self.assignment_epoch {
            return;
        }
        let subscriptions: Vec<(String, BTreeSet<String>)> = self
            .members
            .values()
            .map(|m| (m.id.clone(), m.topics().clone()))
            .collect();
        let specs: Vec<MemberSpec<'_>> = subscriptions
            .iter()
            .map(|(id, topics)| MemberSpec {
                id,
                topics,
                previous: self.target.get(id),
            })
            .collect();
        let target = self.assignor.assign(&specs, &self.metadata);
        self.target = target
            .into_iter()
            .map(|(k, v)| (k, normalized(v)))
            .collect();
        self.assignment_epoch = self.group_epoch;
    }

    /// The subscribed topics as the group's catalog has them.
    pub(super) fn topic_metadata(&self) -> BTreeMap<String, TopicInfo> {
        self.subscribed_topics()
            .into_iter()
            .filter_map(|n| {
                let t = self.catalog.topic(&n)?;
                Some((
                    n,
                    TopicInfo {
                        id: t.id,
                        partitions: t.partitions,
                    },
                ))
            })
            .collect()
    }

    /// The assignor most members name (`uniform` when none does; ties to the first name).
    fn chosen_assignor(&self) -> Assignor {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(a) = &m.server_assignor {
                *votes.entry(a.as_str()).or_default() += 1;
            }
        }
        let best = votes.values().copied().max().unwrap_or(0);
        votes
            .into_iter()
            .find(|(_, n)| *n == best && best > 0)
            .and_then(|(name, _)| Assignor::named(name))
            .unwrap_or(Assignor::Uniform)
    }

    /// Whether another member holds the partition now.
    fn held_elsewhere(&self, member: &str, topic: &TopicId, p: i32) -> bool {
        self.owners
            .get(&(*topic, p))
            .is_some_and(|owner| owner != member)
    }

    /// One step of the member towards its target (Kafka's current assignment builder).
    pub(super) fn reconcile(&mut self, id: &str, owned: Option<&Assignment>, now: Instant) {
        let Some(m) = self.members.get(id) else {
            return;
        };
        if m.epoch == STATIC_LEAVE_EPOCH {
            return;
        }
        match m.state {
            // Done once it reports owning none of what it must revoke.
            MemberState::UnrevokedPartitions
                if owned.is_none_or(|o| overlaps(o, &m.pending_revocation)) =>
            {
                return
            }
            MemberState::Stable if m.epoch == self.assignment_epoch => return,
            _ => {}
        }
        let target = self.target.get(id).cloned().unwrap_or_default();
        let assigned = m.assigned.clone();
        let mut keep = Assignment::new();
        let mut revoke = Assignment::new();
        for (t, parts) in &assigned {
            for &p in parts {
                if target.get(t).is_some_and(|tp| tp.contains(&p)) {
                    keep.entry(*t).or_default().insert(p);
                } else {
                    revoke.entry(*t).or_default().insert(p);
                }
            }
        }
        let mut next = keep.clone();
        let mut unreleased = false;
        for (t, parts) in &target {
            for &p in parts {
                if next.get(t).is_some_and(|n| n.contains(&p)) {
                    continue;
                }
                if self.held_elsewhere(id, t, p) {
                    unreleased = true;
                } else {
                    next.entry(*t).or_default().insert(p);
                }
            }
        }
        let epoch = self.assignment_epoch;
        let Some(m) = self.members.get_mut(id) else {
            return;
        };
        if !revoke.is_empty() {
            m.state = MemberState::UnrevokedPartitions;
            m.assigned = normalized(keep);
            m.pending_revocation = normalized(revoke);
            m.revoke_deadline = Some(now + m.rebalance_timeout);
        } else {
            if m.epoch != epoch {
                m.previous_epoch = m.epoch;
            }
            m.epoch = epoch;
            m.state = if unreleased {
                MemberState::UnreleasedPartitions
            } else {
                MemberState::Stable
            };
            m.assigned = normalized(next);
            m.pending_revocation = Assignment::new();
            m.revoke_deadline = None;
        }
        let held: Vec<(TopicId, i32)> = m
            .assigned
            .iter()
            .chain(m.pending_revocation.iter())
            .flat_map(|(t, parts)| parts.iter().map(move |p| (*t, *p)))
            .collect();
        self.owners.retain(|_, owner| owner != id);
        for key in held {
            self.owners.insert(key, id.to_owned());
        }
    }

    /// Removes members whose session lapsed and those that did not revoke within their
    /// rebalance timeout. Called periodically.
    pub fn tick(&mut self, settings: Settings, now: Instant) {
        let gone: Vec<(String, &'static str)> = self
            .members
            .values()
            .filter_map(|m| {
                let session = m
                    .classic
                    .as_ref()
                    .map_or(settings.session_timeout, |c| c.session_timeout);
                if now.duration_since(m.last_heartbeat) > session {
                    Some((m.id.clone(), "no heartbeat within the session timeout"))
                } else if m.revoke_deadline.is_some_and(|d| now >= d) {
                    Some((m.id.clone(), "did not revoke within its rebalance timeout"))
                } else {
                    None
                }
            })
            .collect();
        for (id, why) in gone {
            log::info!("consumer group {}: member {id} removed ({why})", self.id);
            self.remove_member(&id, now);
        }
    }

    /// Whether an OffsetCommit or OffsetFetch (v9+) by this member at this epoch may go
    /// ahead, as Kafka: epoch -1 (an admin tool, a consumer without group management) while
    /// the group is empty; otherwise UNKNOWN_MEMBER_ID for a stranger and
    /// STALE_MEMBER_EPOCH for another epoch than the member's.
    pub fn check_commit(&self, member_id: &str, epoch: i32) -> Result<(), i16> {
        if epoch < 0 && self.members.is_empty() {
            return Ok(());
        }
        let Some(m) = self.members.get(member_id) else {
            return Err(ResponseError::UnknownMemberId.code());
        };
        if epoch != m.epoch {
            // A classic member's epoch is its generation.
            return Err(if m.classic.is_some() {
                ResponseError::IllegalGeneration.code()
            } else {
                ResponseError::StaleMemberEpoch.code()
            });
        }
        Ok(())
    }

    /// The partitions of an assignment with their topic names (unknown ids left out).
    pub fn named(&self, a: &Assignment) -> Vec<(TopicId, String, Vec<i32>)> {
        a.iter()
            .filter_map(|(t, parts)| {
                let name = self.topic_name(t)?;
                Some((*t, name, parts.iter().copied().collect()))
            })
            .collect()
    }
}

/// Kafka's checks of a heartbeat's fields (INVALID_REQUEST, UNSUPPORTED_ASSIGNOR).
fn validate(hb: &Heartbeat) -> Result<(), Refusal> {
    let invalid = |m: &str| Err(refuse(ResponseError::InvalidRequest, m));
    if hb.member_id.is_empty() && (hb.version >= 1 || hb.epoch != 0) {
        return invalid("MemberId can't be empty.");
    }
    if hb.instance_id.as_deref() == Some("") {
        return invalid("InstanceId can't be empty.");
    }
    if hb.rack_id.as_deref() == Some("") {
        return invalid("RackId can't be empty.");
    }
    match hb.epoch {
        0 => {
            if hb.rebalance_timeout_ms == -1 {
                return invalid("RebalanceTimeoutMs must be provided in first request.");
            }
            if hb
                .owned
                .as_ref()
                .is_some_and(|o| !o.values().all(|p| p.is_empty()))
            {
                return invalid("TopicPartitions must be empty when (re-)joining.");
            }
            if hb.subscribed_topic_names.is_none() && hb.subscribed_topic_regex.is_none() {
                return invalid(
                    "SubscribedTopicNames or SubscribedTopicRegex must be set in first request.",
                );
            }
        }
        e if e > 0 => {}
        LEAVE_EPOCH => {}
        STATIC_LEAVE_EPOCH => {
            if hb.instance_id.is_none() {
                return invalid("InstanceId can't be null when leaving with epoch -2.");
            }
        }
        _ => return invalid("MemberEpoch is invalid."),
    }
    if let Some(a) = &hb.server_assignor {
        if Assignor::named(a).is_none() {
            return Err(refuse(
                ResponseError::UnsupportedAssignor,
                format!(
                    "ServerAssignor {a} is not supported. Supported assignors: uniform, range."
                ),
            ));
        }
    }
    Ok(())
}

/// Total partitions of an assignment (for tests and descriptions).
pub fn partitions(a: &Assignment) -> usize {
    assignor::count(a)
}

/// Also the fixtures of `migration`'s tests.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::catalog::Topic;

    pub(crate) const T: TopicId = [7; 16];

    /// A catalog with topic `t` of `partitions`.
    pub(crate) fn catalog(partitions: i32) -> Arc<CatalogState> {
        let mut c = CatalogState::default();
        c.topics.insert(
            "t".into(),
            Topic {
                name: "t".into(),
                id: T,
                partitions,
                configs: Default::default(),
            },
        );
        c.version = 1;
        Arc::new(c)
    }

    pub(crate) fn settings() -> Settings {
        Settings {
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(5),
            max_size: 10,
            upgrade: true,
            downgrade: true,
        }
    }

    /// A new member subscribing to `t`.
    pub(crate) fn join(id: &str) -> Heartbeat {
        Heartbeat {
            member_id: id.into(),
            epoch: 0,
            rebalance_timeout_ms: 30_000,
            subscribed_topic_names: Some(vec!["t".into()]),
            owned: Some(Assignment::new()),
            version: 1,
            ..Heartbeat::default()
        }
    }

    fn beat(id: &str, epoch: i32, owned: Option<Assignment>) -> Heartbeat {
        Heartbeat {
            member_id: id.into(),
            epoch,
            rebalance_timeout_ms: -1,
            owned,
            version: 1,
            ..Heartbeat::default()
        }
    }

    fn parts(a: &Assignment) -> BTreeSet<i32> {
        a.get(&T).cloned().unwrap_or_default()
    }

    fn owned(p: &BTreeSet<i32>) -> Assignment {
        Assignment::from([(T, p.clone())])
    }

    #[test]
    fn one_member_gets_every_partition() {
        let mut g = ConsumerGroup::new("g");
        let now = Instant::now();
        let a = g.heartbeat(join("a"), catalog(4), settings(), now).unwrap();
        assert_eq!(a.epoch, 1);
        assert_eq!(parts(&a.assignment.unwrap()).len(), 4);
        assert_eq!(g.state_name(), "Stable");
    }

    #[test]
    fn a_partition_moves_only_after_its_old_owner_revoked_it() {
        let mut g = ConsumerGroup::new("g");
        let now = Instant::now();
        let c = catalog(4);
        let a = g.heartbeat(join("a"), c.clone(), settings(), now).unwrap();
        let a_parts = parts(&a.assignment.unwrap());
        // b joins: epoch 2, target splits 2/2; b gets nothing yet (a still owns them).
        let b = g.heartbeat(join("b"), c.clone(), settings(), now).unwrap();
        assert_eq!(b.epoch, 2);
        assert!(parts(&b.assignment.unwrap()).is_empty());
        assert_eq!(g.members["b"].state, MemberState::UnreleasedPartitions);
        // a is told to revoke two (its epoch stays 1 until it does).
        let a2 = g
            .heartbeat(
                beat("a", 1, Some(owned(&a_parts))),
                c.clone(),
                settings(),
                now,
            )
            .unwrap();
        assert_eq!(a2.epoch, 1);
        let kept = parts(&a2.assignment.unwrap());
        assert_eq!(kept.len(), 2);
        assert_eq!(g.members["a"].state, MemberState::UnrevokedPartitions);
        // b still waits while a has not revoked.
        let b2 = g.heartbeat(
            beat("b", 2, Some(Assignment::new())),
            c.clone(),
            settings(),
            now,
        );
        assert!(parts(&g.members["b"].assigned).is_empty(), "{b2:?}");
        // a reports the revocation: it moves to epoch 2.
        let a3 = g
            .heartbeat(beat("a", 1, Some(owned(&kept))), c.clone(), settings(), now)
            .unwrap();
        assert_eq!(a3.epoch, 2);
        // b now gets the released partitions.
        let b3 = g
            .heartbeat(beat("b", 2, Some(Assignment::new())), c, settings(), now)
            .unwrap();
        let b_parts = parts(&b3.assignment.unwrap());
        assert_eq!(b_parts.len(), 2);
        assert!(b_parts.is_disjoint(&kept));
        assert_eq!(g.state_name(), "Stable");
    }

    #[test]
    fn epochs_fence_and_unknown_members_are_refused() {
        let mut g = ConsumerGroup::new("g");
        let now = Instant::now();
        let c = catalog(2);
        g.heartbeat(join("a"), c.clone(), settings(), now).unwrap();
        let e = g
            .heartbeat(beat("a", 5, None), c.clone(), settings(), now)
            .unwrap_err();
        assert_eq!(e.code, ResponseError::FencedMemberEpoch.code());
        let e = g
            .heartbeat(beat("zz", 1, None), c.clone(), settings(), now)
            .unwrap_err();
        assert_eq!(e.code, ResponseError::UnknownMemberId.code());
        let mut bad = join("b");
        bad.server_assignor = Some("sticky".into());
        let e = g.heartbeat(bad, c.clone(), settings(), now).unwrap_err();
        assert_eq!(e.code, ResponseError::UnsupportedAssignor.code());
        let mut full = settings();
        full.max_size = 1;
        let e = g.heartbeat(join("c"), c, full, now).unwrap_err();
        assert_eq!(e.code, ResponseError::GroupMaxSizeReached.code());
    }

    #[test]
    fn leaving_frees_partitions_and_the_session_timeout_removes() {
        let mut g = ConsumerGroup::new("g");
        let now = Instant::now();
        let c = catalog(2);
        g.heartbeat(join("a"), c.clone(), settings(), now).unwrap();
        g.heartbeat(join("b"), c.clone(), settings(), now).unwrap();
        let left = g
            .heartbeat(beat("b", 2, None), c.clone(), settings(), now)
            .and_then(|_| g.heartbeat(beat("b", LEAVE_EPOCH, None), c.clone(), settings(), now))
            .unwrap();
        assert_eq!(left.epoch, -1);
        assert!(!g.members.contains_key("b"));
        g.tick(settings(), now + Duration::from_secs(46));
        assert!(g.members.is_empty());
        assert_eq!(g.state_name(), "Empty");
    }

    #[test]
    fn a_static_member_coming_back_keeps_its_partitions() {
        let mut g = ConsumerGroup::new("g");
        let now = Instant::now();
        let c = catalog(4);
        let mut j = join("a1");
        j.instance_id = Some("i".into());
        let a = g.heartbeat(j, c.clone(), settings(), now).unwrap();
        let mine = parts(&a.assignment.unwrap());
        let mut leave = beat("a1", STATIC_LEAVE_EPOCH, None);
        leave.instance_id = Some("i".into());
        g.heartbeat(leave, c.clone(), settings(), now).unwrap();
        let epoch_before = g.group_epoch;
        // A new member of the instance takes the partitions over, without a rebalance.
        let mut j2 = join("a2");
        j2.instance_id = Some("i".into());
        let back = g.heartbeat(j2, c.clone(), settings(), now).unwrap();
        assert_eq!(parts(&back.assignment.unwrap()), mine);
        assert_eq!(back.epoch, 1);
        assert_eq!(g.group_epoch, epoch_before, "no rebalance");
        // Another member with the instance id while that one is active is refused.
        let mut j3 = join("a3");
        j3.instance_id = Some("i".into());
        let e = g.heartbeat(j3, c, settings(), now).unwrap_err();
        assert_eq!(e.code, ResponseError::UnreleasedInstanceId.code());
    }

    #[test]
    fn new_partitions_and_regex_subscriptions_are_assigned() {
        let mut g = ConsumerGroup::new("g");
        let now = Instant::now();
        let mut j = join("a");
        j.subscribed_topic_names = None;
        j.subscribed_topic_regex = Some("t.*".into());
        let a = g.heartbeat(j, catalog(2), settings(), now).unwrap();
        assert_eq!(parts(&a.assignment.unwrap()).len(), 2);
        let mut bigger = (*catalog(3)).clone();
        bigger.version = 2;
        let a2 = g
            .heartbeat(
                beat("a", 1, Some(owned(&BTreeSet::from([0, 1])))),
                Arc::new(bigger),
                settings(),
                now,
            )
            .unwrap();
        assert_eq!(a2.epoch, 2);
        assert_eq!(parts(&a2.assignment.unwrap()).len(), 3);
    }

    #[test]
    fn a_member_that_does_not_revoke_in_its_rebalance_timeout_is_removed() {
        let mut g = ConsumerGroup::new("g");
        let now = Instant::now();
        let c = catalog(2);
        let a = g.heartbeat(join("a"), c.clone(), settings(), now).unwrap();
        let mine = parts(&a.assignment.unwrap());
        g.heartbeat(join("b"), c.clone(), settings(), now).unwrap();
        g.heartbeat(beat("a", 1, Some(owned(&mine))), c.clone(), settings(), now)
            .unwrap();
        assert_eq!(g.members["a"].state, MemberState::UnrevokedPartitions);
        // Still heartbeating, never revoking: out after the rebalance timeout (30 s).
        let later = now + Duration::from_secs(31);
        g.heartbeat(
            beat("a", 1, Some(owned(&mine))),
            c.clone(),
            settings(),
            later,
        )
        .unwrap();
        g.tick(settings(), later);
        assert!(!g.members.contains_key("a"));
        let b = g
            .heartbeat(beat("b", 2, Some(Assignment::new())), c, settings(), later)
            .unwrap();
        assert_eq!(parts(&b.assignment.unwrap()).len(), 2);
    }

    #[test]
    fn a_regex_must_compile_on_its_own() {
        let mut g = ConsumerGroup::new("g");
        for bad in ["(t", "t)|(x"] {
            let mut j = join("a");
            j.subscribed_topic_names = None;
            j.subscribed_topic_regex = Some(bad.into());
            let e = g
                .heartbeat(j, catalog(1), settings(), Instant::now())
                .unwrap_err();
            assert_eq!(
                e.code,
                ResponseError::InvalidRegularExpression.code(),
                "{bad}"
            );
        }
        assert!(g.members.is_empty());
    }

    #[test]
    fn commits_check_member_and_epoch() {
        let mut g = ConsumerGroup::new("g");
        let now = Instant::now();
        g.heartbeat(join("a"), catalog(1), settings(), now).unwrap();
        assert_eq!(g.check_commit("a", 1), Ok(()));
        assert_eq!(
            g.check_commit("a", 0),
            Err(ResponseError::StaleMemberEpoch.code())
        );
        assert_eq!(
            g.check_commit("x", 1),
            Err(ResponseError::UnknownMemberId.code())
        );
        assert_eq!(
            g.check_commit("", -1),
            Err(ResponseError::UnknownMemberId.code())
        );
    }
}
