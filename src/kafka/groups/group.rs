//! One consumer group's membership and rebalance state machine (Kafka's classic
//! protocol): Empty → PreparingRebalance → CompletingRebalance → Stable.
//!
//! Lives on the group's coordinator shard only, inside `Coordinator`. Every method is
//! synchronous; a JoinGroup or SyncGroup that must wait is handed a oneshot receiver that
//! the state machine answers when the rebalance moves on. Both ends of that oneshot stay on
//! the coordinator shard: the receiver is awaited by the task `Core::invoke_on` spawns there
//! (or by the connection's own task when the group is local), and the answer to the
//! connection's shard travels back over the mesh (`runtime::reply`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupResponse, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    joining: Option<(oneshot::Sender<JoinGroupResponse>, i16)>,
    syncing: Option<(oneshot::Sender<SyncGroupResponse>, i16)>,
    last_heartbeat: Instant,
    /// Order of first join; the longest-standing member leads.
    seniority: u64,
}

/// What a JoinGroup gets: an answer now, or one when the rebalance completes.
pub enum JoinOutcome {
    Now(JoinGroupResponse),
    Wait(oneshot::Receiver<JoinGroupResponse>),
}

pub enum SyncOutcome {
    Now(SyncGroupResponse),
    Wait(oneshot::Receiver<SyncGroupResponse>),
}

/// The parts of a JoinGroup request the state machine needs.
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub version: i16,
}

/// Coordinator-wide settings the state machine applies.
#[derive(Clone, Copy)]
pub struct Timeouts {
    pub initial_rebalance_delay: Duration,
    pub min_session: Duration,
    pub max_session: Duration,
}

pub struct Group {
    pub id: String,
    pub state: State,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED and not yet used (KIP-394).
    pending: HashMap<String, Instant>,
    /// group.instance.id → current member id (static membership, KIP-345).
    statics: HashMap<String, String>,
    initial_deadline: Option<Instant>,
    rebalance_deadline: Option<Instant>,
    next_seniority: u64,
}

fn err(e: ResponseError) -> i16 {
    e.code()
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

fn new_member_id(client_id: &str, group: &str) -> String {
    let id = crate::catalog::new_topic_id(group);
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let prefix = if client_id.is_empty() {
        "member"
    } else {
        client_id
    };
    format!(
        "{prefix}-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

impl Group {
    pub fn new(id: &str) -> Group {
        Group {
            id: id.to_owned(),
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            statics: HashMap::new(),
            initial_deadline: None,
            rebalance_deadline: None,
            next_seniority: 0,
        }
    }

    fn join_error(&self, code: i16, member_id: &str) -> JoinGroupResponse {
        JoinGroupResponse::default()
            .with_error_code(code)
            .with_generation_id(-1)
            .with_protocol_name(Some(s("")))
            .with_leader(s(""))
            .with_member_id(s(member_id))
    }

    /// Protocol names every member supports.
    fn common_protocols(&self) -> Option<Vec<String>> {
        let mut it = self.members.values();
        let first = it.next()?;
        let mut common: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in it {
            common.retain(|n| m.protocols.iter().any(|(p, _)| p == n));
        }
        Some(common)
    }

    /// A member id the fencing rules reject: another member holds this instance id.
    fn fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        match instance_id.and_then(|i| self.statics.get(i)) {
            Some(current) => current != member_id,
            None => false,
        }
    }

    pub fn join(&mut self, req: JoinRequest, t: Timeouts, now: Instant) -> JoinOutcome {
        if req.session_timeout < t.min_session || req.session_timeout > t.max_session {
            return JoinOutcome::Now(
                self.join_error(err(ResponseError::InvalidSessionTimeout), &req.member_id),
            );
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return JoinOutcome::Now(self.join_error(
                err(ResponseError::InconsistentGroupProtocol),
                &req.member_id,
            ));
        }
        if !self.members.is_empty() {
            let same_type = self.protocol_type.as_deref() == Some(req.protocol_type.as_str());
            let overlap = self
                .common_protocols()
                .is_some_and(|c| req.protocols.iter().any(|(n, _)| c.contains(n)));
            // A lone member may change its own protocols.
            let alone = self.members.len() == 1 && self.members.contains_key(&req.member_id);
            if !alone && (!same_type || !overlap) {
                return JoinOutcome::Now(self.join_error(
                    err(ResponseError::InconsistentGroupProtocol),
                    &req.member_id,
                ));
            }
        }
        let member_id = if req.member_id.is_empty() {
            match &req.instance_id {
                Some(instance) => {
                    let new_id = new_member_id(&req.client_id, &self.id);
                    if let Some(old) = self.statics.get(instance).cloned() {
                        // The instance came back with a new member id: fence the old one.
                        if let Some(mut m) = self.members.remove(&old) {
                            if let Some((tx, _)) = m.joining.take() {
                                let _ = tx.send(
                                    self.join_error(err(ResponseError::FencedInstanceId), &old),
                                );
                            }
                            if let Some((tx, _)) = m.syncing.take() {
                                let _ = tx.send(
                                    SyncGroupResponse::default()
                                        .with_error_code(err(ResponseError::FencedInstanceId)),
                                );
                            }
                            let unchanged = m.protocols == req.protocols;
                            m.id = new_id.clone();
                            let was_leader = self.leader.as_deref() == Some(old.as_str());
                            if was_leader {
                                self.leader = Some(new_id.clone());
                            }
                            self.statics.insert(instance.clone(), new_id.clone());
                            // A known static member rejoining a stable group with the same
                            // protocols keeps its assignment: no rebalance (KIP-345), even
                            // when it led the group (KIP-814).
                            if self.state == State::Stable && unchanged {
                                m.last_heartbeat = now;
                                m.session_timeout = req.session_timeout;
                                m.rebalance_timeout = req.rebalance_timeout;
                                self.members.insert(new_id.clone(), m);
                                let resp = self.static_rejoin_response(&new_id, &old, req.version);
                                return JoinOutcome::Now(resp);
                            }
                            self.members.insert(new_id.clone(), m);
                        }
                    }
                    self.statics.insert(instance.clone(), new_id.clone());
                    new_id
                }
                None if req.version >= 4 => {
                    let id = new_member_id(&req.client_id, &self.id);
                    self.pending.insert(id.clone(), now);
                    return JoinOutcome::Now(
                        self.join_error(err(ResponseError::MemberIdRequired), &id),
                    );
                }
                None => new_member_id(&req.client_id, &self.id),
            }
        } else {
            if self.fenced(&req.member_id, req.instance_id.as_deref()) {
                return JoinOutcome::Now(
                    self.join_error(err(ResponseError::FencedInstanceId), &req.member_id),
                );
            }
            let known = self.members.contains_key(&req.member_id);
            let pending = self.pending.remove(&req.member_id).is_some();
            if !known && !pending {
                return JoinOutcome::Now(
                    self.join_error(err(ResponseError::UnknownMemberId), &req.member_id),
                );
            }
            if let Some(instance) = &req.instance_id {
                self.statics.insert(instance.clone(), req.member_id.clone());
            }
            req.member_id.clone()
        };

        let (tx, rx) = oneshot::channel();
        let seniority = self.next_seniority;
        let member = self
            .members
            .entry(member_id.clone())
            .or_insert_with(|| Member {
                id: member_id.clone(),
                instance_id: req.instance_id.clone(),
                client_id: req.client_id.clone(),
                client_host: req.client_host.clone(),
                session_timeout: req.session_timeout,
                rebalance_timeout: req.rebalance_timeout,
                protocol_type: req.protocol_type.clone(),
                protocols: Vec::new(),
                assignment: Bytes::new(),
                joining: None,
                syncing: None,
                last_heartbeat: now,
                seniority,
            });
        if member.seniority == seniority {
            self.next_seniority += 1;
        }
        member.protocols = req.protocols;
        member.protocol_type = req.protocol_type.clone();
        member.session_timeout = req.session_timeout;
        member.rebalance_timeout = req.rebalance_timeout;
        member.client_id = req.client_id;
        member.client_host = req.client_host;
        member.last_heartbeat = now;
        if let Some((old, _)) = member.joining.replace((tx, req.version)) {
            drop(old);
        }
        if self.protocol_type.is_none() || self.members.len() == 1 {
            self.protocol_type = Some(req.protocol_type);
        }
        self.prepare_rebalance(t, now);
        self.try_complete_join(now);
        JoinOutcome::Wait(rx)
    }

    /// Moves to PreparingRebalance; SyncGroups waiting on the old generation are told.
    fn prepare_rebalance(&mut self, t: Timeouts, now: Instant) {
        if self.state == State::PreparingRebalance {
            return;
        }
        if self.state == State::CompletingRebalance {
            for m in self.members.values_mut() {
                if let Some((tx, _)) = m.syncing.take() {
                    let _ = tx.send(
                        SyncGroupResponse::default()
                            .with_error_code(err(ResponseError::RebalanceInProgress)),
                    );
                }
            }
        }
        let max_rebalance = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::from_secs(60));
        self.initial_deadline =
            (self.state == State::Empty).then(|| now + t.initial_rebalance_delay);
        self.rebalance_deadline = Some(now + max_rebalance);
        self.state = State::PreparingRebalance;
    }

    /// Completes the join phase when every member has rejoined (after the initial delay of a
    /// new group) or the rebalance timeout has passed; members that did not rejoin are out.
    pub fn try_complete_join(&mut self, now: Instant) -> bool {
        if self.state != State::PreparingRebalance {
            return false;
        }
        let all_joined = self.members.values().all(|m| m.joining.is_some());
        let initial_done = self.initial_deadline.is_none_or(|d| now >= d);
        let timed_out = self.rebalance_deadline.is_some_and(|d| now >= d);
        if !((all_joined && initial_done) || timed_out) {
            return false;
        }
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.joining.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id);
        }
        self.generation += 1;
        self.initial_deadline = None;
        self.rebalance_deadline = None;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.protocol = None;
            self.leader = None;
            return true;
        }
        self.protocol = self.select_protocol();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self
                .members
                .values()
                .min_by_key(|m| m.seniority)
                .map(|m| m.id.clone());
        }
        self.state = State::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let Some((tx, version)) = self.members.get_mut(&id).and_then(|m| m.joining.take())
            else {
                continue;
            };
            if let Some(m) = self.members.get(&id) {
                let resp = self.join_response(m, version, true);
                let _ = tx.send(resp);
            }
            if let Some(m) = self.members.get_mut(&id) {
                m.assignment = Bytes::new();
                m.last_heartbeat = now;
            }
        }
        true
    }

    /// The protocol most members prefer among those all support.
    fn select_protocol(&self) -> Option<String> {
        let common = self.common_protocols()?;
        let mut votes: Vec<(String, usize)> = common.iter().map(|c| (c.clone(), 0)).collect();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| common.contains(n)) {
                if let Some(v) = votes.iter_mut().find(|(c, _)| c == name) {
                    v.1 += 1;
                }
            }
        }
        // Ties go to the earliest in the protocol order (votes keeps common's order).
        let best = votes.iter().map(|(_, n)| *n).max()?;
        votes.into_iter().find(|(_, n)| *n == best).map(|(c, _)| c)
    }

    fn join_response(&self, m: &Member, version: i16, with_members: bool) -> JoinGroupResponse {
        let protocol = self.protocol.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let mut r = JoinGroupResponse::default()
            .with_generation_id(self.generation)
            .with_protocol_name(Some(s(&protocol)))
            .with_leader(s(&leader))
            .with_member_id(s(&m.id));
        if version >= 7 {
            r.protocol_type = self.protocol_type.as_deref().map(s);
        }
        if with_members && leader == m.id {
            r.members = self
                .members
                .values()
                .map(|x| {
                    let metadata = x
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == protocol)
                        .map(|(_, md)| md.clone())
                        .unwrap_or_default();
                    let mut jm = JoinGroupResponseMember::default()
                        .with_member_id(s(&x.id))
                        .with_metadata(metadata);
                    if version >= 5 {
                        jm.group_instance_id = x.instance_id.as_deref().map(s);
                    }
                    jm
                })
                .collect();
        }
        r
    }

    /// What a static member that rejoined a stable group under `new_id` (its previous
    /// member id `old_id`) is told, as Kafka does: a follower just its generation. A leader
    /// on JoinGroup v9+ is told it leads, with the members, and `skip_assignment` (KIP-814):
    /// it keeps watching metadata but must not reassign. Before v9 a leader is told the old
    /// leader id, so it does not take itself for the leader and assign again; either way it
    /// then gets its assignment back from SyncGroup.
    fn static_rejoin_response(
        &self,
        new_id: &str,
        old_id: &str,
        version: i16,
    ) -> JoinGroupResponse {
        let Some(m) = self.members.get(new_id) else {
            return self.join_error(err(ResponseError::UnknownMemberId), new_id);
        };
        let leads = self.leader.as_deref() == Some(new_id);
        if leads && version >= 9 {
            let mut r = self.join_response(m, version, true);
            r.skip_assignment = true;
            return r;
        }
        let mut r = self.join_response(m, version, false);
        if leads {
            r.leader = s(old_id);
        }
        r
    }

    fn remove_member(&mut self, id: &str) {
        if let Some(mut m) = self.members.remove(id) {
            if let Some(instance) = &m.instance_id {
                if self.statics.get(instance).map(String::as_str) == Some(id) {
                    self.statics.remove(instance);
                }
            }
            if let Some((tx, _)) = m.joining.take() {
                let _ = tx.send(self.join_error(err(ResponseError::UnknownMemberId), id));
            }
            if let Some((tx, _)) = m.syncing.take() {
                let _ = tx.send(
                    SyncGroupResponse::default()
                        .with_error_code(err(ResponseError::UnknownMemberId)),
                );
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    /// Checks member id, instance fencing and generation, as Heartbeat, SyncGroup and
    /// OffsetCommit do.
    fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), i16> {
        if self.fenced(member_id, instance_id) {
            return Err(err(ResponseError::FencedInstanceId));
        }
        if !self.members.contains_key(member_id) {
            return Err(err(ResponseError::UnknownMemberId));
        }
        if generation != self.generation {
            return Err(err(ResponseError::IllegalGeneration));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
        version: i16,
        now: Instant,
    ) -> SyncOutcome {
        let fail = |code| SyncOutcome::Now(SyncGroupResponse::default().with_error_code(code));
        if let Err(code) = self.check_member(member_id, instance_id, generation) {
            return fail(code);
        }
        if protocol_type.is_some_and(|p| Some(p) != self.protocol_type.as_deref())
            || protocol_name.is_some_and(|p| Some(p) != self.protocol.as_deref())
        {
            return fail(err(ResponseError::InconsistentGroupProtocol));
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_heartbeat = now;
        }
        match self.state {
            State::Empty => fail(err(ResponseError::UnknownMemberId)),
            State::PreparingRebalance => fail(err(ResponseError::RebalanceInProgress)),
            State::Stable => SyncOutcome::Now(self.sync_response(member_id, version)),
            State::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.members.get_mut(member_id) {
                    m.syncing = Some((tx, version));
                }
                if self.leader.as_deref() == Some(member_id) {
                    for m in self.members.values_mut() {
                        m.assignment = assignments
                            .iter()
                            .find(|(id, _)| *id == m.id)
                            .map(|(_, a)| a.clone())
                            .unwrap_or_default();
                    }
                    self.state = State::Stable;
                    let waiting: Vec<String> = self
                        .members
                        .values()
                        .filter(|m| m.syncing.is_some())
                        .map(|m| m.id.clone())
                        .collect();
                    for id in waiting {
                        let Some((tx, v)) =
                            self.members.get_mut(&id).and_then(|m| m.syncing.take())
                        else {
                            continue;
                        };
                        let _ = tx.send(self.sync_response(&id, v));
                    }
                }
                SyncOutcome::Wait(rx)
            }
        }
    }

    fn sync_response(&self, member_id: &str, version: i16) -> SyncGroupResponse {
        let assignment = self
            .members
            .get(member_id)
            .map(|m| m.assignment.clone())
            .unwrap_or_default();
        let mut r = SyncGroupResponse::default().with_assignment(assignment);
        if version >= 5 {
            r.protocol_type = self.protocol_type.as_deref().map(s);
            r.protocol_name = self.protocol.as_deref().map(s);
        }
        r
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        if self.state == State::Empty {
            return err(ResponseError::UnknownMemberId);
        }
        if let Err(code) = self.check_member(member_id, instance_id, generation) {
            return code;
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_heartbeat = now;
        }
        if self.state == State::PreparingRebalance {
            return err(ResponseError::RebalanceInProgress);
        }
        0
    }

    /// Removes one leaving member; returns its error code.
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        t: Timeouts,
        now: Instant,
    ) -> i16 {
        let id = match instance_id {
            Some(instance) => match self.statics.get(instance) {
                Some(current) if member_id.is_empty() || current == member_id => current.clone(),
                Some(_) => return err(ResponseError::FencedInstanceId),
                None => return err(ResponseError::UnknownMemberId),
            },
            None => member_id.to_owned(),
        };
        if !self.members.contains_key(&id) {
            return err(ResponseError::UnknownMemberId);
        }
        self.remove_member(&id);
        self.after_departure(t, now);
        0
    }

    fn after_departure(&mut self, t: Timeouts, now: Instant) {
        if self.members.is_empty() && self.state != State::PreparingRebalance {
            self.state = State::Empty;
            self.generation += 1;
            self.protocol = None;
            self.leader = None;
            return;
        }
        self.prepare_rebalance(t, now);
        self.try_complete_join(now);
    }

    /// Expires members whose session lapsed and pending ids never used; completes a
    /// rebalance whose time has come. Called periodically.
    /// Whether the group has members or members waiting to join: only such a group has
    /// timeouts for the coordinator's clock to watch.
    pub fn has_members(&self) -> bool {
        !self.members.is_empty() || !self.pending.is_empty()
    }

    pub fn tick(&mut self, t: Timeouts, now: Instant) {
        self.pending
            .retain(|_, since| now.duration_since(*since) < Duration::from_secs(300));
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                m.joining.is_none() && now.duration_since(m.last_heartbeat) > m.session_timeout
            })
            .map(|m| m.id.clone())
            .collect();
        if !expired.is_empty() {
            for id in &expired {
                log::info!(
                    "group {}: member {id} expired (no heartbeat within its session timeout)",
                    self.id
                );
                self.remove_member(id);
            }
            self.after_departure(t, now);
        }
        self.try_complete_join(now);
    }

    /// Whether a generation-checked commit may go ahead.
    pub fn check_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), i16> {
        if generation < 0 && member_id.is_empty() {
            // A commit from outside the group (simple consumer, admin tool).
            return if self.members.is_empty() {
                Ok(())
            } else {
                Err(err(ResponseError::UnknownMemberId))
            };
        }
        self.check_member(member_id, instance_id, generation)?;
        if self.state == State::CompletingRebalance {
            return Err(err(ResponseError::RebalanceInProgress));
        }
        Ok(())
    }

    /// Topics the members subscribed to (consumer protocol metadata: version i16, then an
    /// array of topic names).
    pub fn subscribed_topics(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in self.members.values() {
            for (_, md) in &m.protocols {
                out.extend(parse_subscription(md));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    pub fn member_metadata(&self, m: &Member) -> Bytes {
        let protocol = self.protocol.clone().unwrap_or_default();
        m.protocols
            .iter()
            .find(|(n, _)| *n == protocol)
            .map(|(_, md)| md.clone())
            .unwrap_or_default()
    }
}

/// A classic member of a consumer group handed back to a classic group (online
/// downgrade, `migration.rs`).
pub struct HandedOver {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// What it owns, as a ConsumerProtocolAssignment.
    pub assignment: Bytes,
}

impl Group {
    /// Answers every waiting JoinGroup and SyncGroup with REBALANCE_IN_PROGRESS: the group
    /// becomes a consumer group (online upgrade) and they retry there.
    pub fn abort_waiting(&mut self) {
        for m in self.members.values_mut() {
            if let Some((tx, _)) = m.joining.take() {
                let _ = tx.send(
                    JoinGroupResponse::default()
                        .with_error_code(err(ResponseError::RebalanceInProgress))
                        .with_generation_id(-1)
                        .with_protocol_name(Some(s("")))
                        .with_leader(s(""))
                        .with_member_id(s(&m.id)),
                );
            }
            if let Some((tx, _)) = m.syncing.take() {
                let _ = tx.send(
                    SyncGroupResponse::default()
                        .with_error_code(err(ResponseError::RebalanceInProgress)),
                );
            }
        }
    }

    /// The classic group a consumer group becomes when only classic members are left
    /// (online downgrade): its generation is the consumer group's epoch, the members keep
    /// what they own and are made to rejoin (PreparingRebalance: their heartbeats answer
    /// REBALANCE_IN_PROGRESS), so the classic protocol assigns anew.
    pub fn handed_over(
        id: &str,
        generation: i32,
        members: Vec<HandedOver>,
        t: Timeouts,
        now: Instant,
    ) -> Group {
        let mut g = Group::new(id);
        g.generation = generation;
        g.state = State::Stable;
        g.protocol_type = Some("consumer".to_owned());
        for h in members {
            if let Some(instance) = &h.instance_id {
                g.statics.insert(instance.clone(), h.id.clone());
            }
            let seniority = g.next_seniority;
            g.next_seniority += 1;
            g.members.insert(
                h.id.clone(),
                Member {
                    id: h.id,
                    instance_id: h.instance_id,
                    client_id: h.client_id,
                    client_host: h.client_host,
                    session_timeout: h.session_timeout,
                    rebalance_timeout: h.rebalance_timeout,
                    protocol_type: h.protocol_type,
                    protocols: h.protocols,
                    assignment: h.assignment,
                    joining: None,
                    syncing: None,
                    last_heartbeat: now,
                    seniority,
                },
            );
        }
        g.protocol = g.select_protocol();
        g.leader = g.members.keys().next().cloned();
        g.prepare_rebalance(t, now);
        g
    }
}

/// Topic names of a ConsumerProtocolSubscription; empty when it cannot be read.
pub fn parse_subscription(md: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let get_i16 = |at: usize| md.get(at..at + 2).map(|b| i16::from_be_bytes([b[0], b[1]]));
    let Some(count) = md
        .get(2..6)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    else {
        return out;
    };
    let mut at = 6;
    for _ in 0..count.max(0) {
        let Some(len) = get_i16(at) else { break };
        let Some(name) = md.get(at + 2..at + 2 + len.max(0) as usize) else {
            break;
        };
        out.push(String::from_utf8_lossy(name).into_owned());
        at += 2 + len.max(0) as usize;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Timeouts {
        Timeouts {
            initial_rebalance_delay: Duration::ZERO,
            min_session: Duration::from_millis(1),
            max_session: Duration::from_secs(3600),
        }
    }

    fn join(g: &mut Group, id: &str, now: Instant) -> JoinOutcome {
        g.join(
            JoinRequest {
                member_id: id.into(),
                instance_id: None,
                client_id: "c".into(),
                client_host: "h".into(),
                session_timeout: Duration::from_secs(10),
                rebalance_timeout: Duration::from_secs(10),
                protocol_type: "consumer".into(),
                protocols: vec![
                    ("range".into(), Bytes::new()),
                    ("roundrobin".into(), Bytes::new()),
                ],
                version: 9,
            },
            t(),
            now,
        )
    }

    fn now_response(o: JoinOutcome) -> JoinGroupResponse {
        match o {
            JoinOutcome::Now(r) => r,
            JoinOutcome::Wait(mut rx) => rx.try_recv().ok().flatten().expect("answered"),
        }
    }

    #[test]
    fn two_members_rebalance_and_sync() {
        let mut g = Group::new("g");
        let now = Instant::now();
        let r = now_response(join(&mut g, "", now));
        assert_eq!(r.error_code, err(ResponseError::MemberIdRequired));
        let a = r.member_id.to_string();
        let ra = now_response(join(&mut g, &a, now));
        assert_eq!(ra.generation_id, 1);
        assert_eq!(ra.leader.to_string(), a);
        assert_eq!(ra.members.len(), 1);
        // A second member forces a rebalance: the first must rejoin.
        let b = now_response(join(&mut g, "", now)).member_id.to_string();
        let JoinOutcome::Wait(mut wb) = join(&mut g, &b, now) else {
            panic!("second member waits for the rebalance");
        };
        assert_eq!(g.state, State::PreparingRebalance);
        assert_eq!(
            g.heartbeat(&a, None, 1, now),
            err(ResponseError::RebalanceInProgress)
        );
        let ra = now_response(join(&mut g, &a, now));
        let rb = wb.try_recv().ok().flatten().expect("b answered");
        assert_eq!((ra.generation_id, rb.generation_id), (2, 2));
        assert_eq!(ra.members.len(), 2, "the leader sees every member");
        assert!(rb.members.is_empty());
        assert_eq!(
            ra.protocol_name.map(|p| p.to_string()),
            Some("range".into())
        );
        // Follower syncs first and waits; the leader's assignment answers both.
        let SyncOutcome::Wait(mut sb) = g.sync(&b, None, 2, None, None, vec![], 5, now) else {
            panic!("follower waits for the leader");
        };
        let assignments = vec![
            (a.clone(), Bytes::from_static(b"A")),
            (b.clone(), Bytes::from_static(b"B")),
        ];
        let SyncOutcome::Wait(mut sa) = g.sync(&a, None, 2, None, None, assignments, 5, now) else {
            panic!("leader answered through its waiter");
        };
        assert_eq!(
            sa.try_recv().ok().flatten().unwrap().assignment,
            Bytes::from_static(b"A")
        );
        assert_eq!(
            sb.try_recv().ok().flatten().unwrap().assignment,
            Bytes::from_static(b"B")
        );
        assert_eq!(g.state, State::Stable);
        assert_eq!(
            g.heartbeat(&b, None, 1, now),
            err(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            g.heartbeat("nobody", None, 2, now),
            err(ResponseError::UnknownMemberId)
        );
        // Session expiry of b triggers a rebalance that a alone completes.
        let later = now + Duration::from_secs(11);
        g.heartbeat(&a, None, 2, later);
        g.tick(t(), later);
        assert!(!g.members.contains_key(&b));
        assert_eq!(g.state, State::PreparingRebalance);
        let ra = now_response(join(&mut g, &a, later));
        assert_eq!(ra.generation_id, 3);
    }

    #[test]
    fn subscription_metadata_is_parsed() {
        let mut md = vec![0, 1, 0, 0, 0, 2];
        for t in ["orders", "x"] {
            md.extend((t.len() as i16).to_be_bytes());
            md.extend(t.as_bytes());
        }
        assert_eq!(parse_subscription(&md), vec!["orders", "x"]);
        assert!(parse_subscription(&[0, 1, 0]).is_empty());
        assert!(parse_subscription(&[0, 1, 0, 0, 0, 9, 0, 50]).is_empty());
    }

    fn join_static(
        g: &mut Group,
        id: &str,
        instance: &str,
        version: i16,
        now: Instant,
    ) -> JoinOutcome {
        g.join(
            JoinRequest {
                member_id: id.into(),
                instance_id: Some(instance.into()),
                client_id: "c".into(),
                client_host: "h".into(),
                session_timeout: Duration::from_secs(10),
                rebalance_timeout: Duration::from_secs(10),
                protocol_type: "consumer".into(),
                protocols: vec![("range".into(), Bytes::new())],
                version,
            },
            t(),
            now,
        )
    }

    /// Two static members, `i-a` leading, synced and stable at generation 2: (a, b).
    fn stable_static_pair(g: &mut Group, now: Instant) -> (String, String) {
        let a = now_response(join_static(g, "", "i-a", 5, now))
            .member_id
            .to_string();
        let JoinOutcome::Wait(mut wb) = join_static(g, "", "i-b", 5, now) else {
            panic!("the second member waits for the rebalance");
        };
        let ra = now_response(join_static(g, &a, "i-a", 5, now));
        let rb = wb.try_recv().ok().flatten().expect("b answered");
        let b = rb.member_id.to_string();
        assert_eq!((ra.generation_id, ra.leader.to_string()), (2, a.clone()));
        let SyncOutcome::Wait(_sb) = g.sync(&b, Some("i-b"), 2, None, None, vec![], 5, now) else {
            panic!("follower waits");
        };
        let assignments = vec![
            (a.clone(), Bytes::from_static(b"A")),
            (b.clone(), Bytes::from_static(b"B")),
        ];
        let _ = g.sync(&a, Some("i-a"), 2, None, None, assignments, 5, now);
        assert_eq!(g.state, State::Stable);
        (a, b)
    }

    fn synced(o: SyncOutcome) -> SyncGroupResponse {
        match o {
            SyncOutcome::Now(r) => r,
            SyncOutcome::Wait(mut rx) => rx.try_recv().ok().flatten().expect("answered"),
        }
    }

    /// KIP-814: a static leader that restarts (JoinGroup v9+) is told it leads but must skip
    /// the assignment; the group stays stable at its generation and the leader's old
    /// assignment comes back from SyncGroup.
    #[test]
    fn static_leader_rejoin_skips_assignment_without_rebalance() {
        let mut g = Group::new("g");
        let now = Instant::now();
        let (a, b) = stable_static_pair(&mut g, now);
        let r = now_response(join_static(&mut g, "", "i-a", 9, now));
        let a2 = r.member_id.to_string();
        assert_ne!(a2, a);
        assert_eq!(r.error_code, 0);
        assert_eq!(r.generation_id, 2, "no new generation");
        assert!(r.skip_assignment);
        assert_eq!(r.leader.to_string(), a2, "told it leads");
        assert_eq!(r.members.len(), 2, "the leader sees the members");
        assert_eq!(g.state, State::Stable);
        assert_eq!(
            g.heartbeat(&b, Some("i-b"), 2, now),
            0,
            "the follower is untouched"
        );
        let sa = synced(g.sync(&a2, Some("i-a"), 2, None, None, vec![], 9, now));
        assert_eq!((sa.error_code, &sa.assignment[..]), (0, &b"A"[..]));
        // The old member id is fenced.
        assert_eq!(
            g.heartbeat(&a, Some("i-a"), 2, now),
            err(ResponseError::FencedInstanceId)
        );
    }

    /// Before JoinGroup v9 the restarted static leader is given the old leader id, so it
    /// acts as a follower and assigns nothing; still no rebalance.
    #[test]
    fn static_leader_rejoin_before_v9_is_told_the_old_leader() {
        let mut g = Group::new("g");
        let now = Instant::now();
        let (a, b) = stable_static_pair(&mut g, now);
        let r = now_response(join_static(&mut g, "", "i-a", 5, now));
        let a2 = r.member_id.to_string();
        assert_eq!((r.error_code, r.generation_id), (0, 2));
        assert_eq!(r.leader.to_string(), a, "not its own id");
        assert!(r.members.is_empty());
        assert!(!r.skip_assignment);
        assert_eq!(g.state, State::Stable);
        assert_eq!(
            g.leader.as_deref(),
            Some(a2.as_str()),
            "it still leads the group"
        );
        assert_eq!(g.heartbeat(&b, Some("i-b"), 2, now), 0);
        let sa = synced(g.sync(&a2, Some("i-a"), 2, None, None, vec![], 5, now));
        assert_eq!((sa.error_code, &sa.assignment[..]), (0, &b"A"[..]));
    }
}
