//! Consumer-group coordination: membership and rebalances of classic groups (`group.rs`)
//! and of consumer-protocol groups (KIP-848: `consumer.rs`, its assignors `assignor.rs`,
//! and the coordinator's side of them, `consumer_coordinator.rs`), and committed offsets,
//! which both kinds share (`store.rs`).
//!
//! Each group is coordinated by one shard, `group_owner(group id)`; every shard has a
//! `Coordinator` for the groups that hash to it. Handlers on the connection's shard send
//! the decoded request to the coordinator shard (`Shard::group`, groups' "ask the owner"
//! call, defined here) and encode its answer.
//! A JoinGroup or SyncGroup that must wait for the rebalance holds its reply channel until
//! the state machine answers it; that channel never leaves the coordinator shard (the
//! answer crosses back as a mesh message, `runtime::reply`), so no waker crosses a thread.
//! Every change applied here is also queued, after it is durable and answered, for the
//! `__consumer_offsets` view (`kafka::offsets_topic`).

pub mod assignor;
pub mod consumer;
mod consumer_coordinator;
pub mod group;
pub mod migration;
pub mod store;
pub mod txn_offsets;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, JoinGroupResponse, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use self::group::{Group, JoinOutcome, JoinRequest, State, SyncOutcome, Timeouts};
use self::store::{Committed, OffsetRecord, OffsetStore, Offsets};
use crate::broker::Shard;
use crate::config::Config;
use crate::kafka::offsets_topic::{GroupSnapshot, TopicRecord};
use crate::util::notify::{Listener, Notify};
use crate::util::stable_hash;

/// The shard that coordinates `group`.
pub fn group_owner(group: &str, shards: usize) -> usize {
    (stable_hash(group.as_bytes()) % shards as u64) as usize
}

impl Shard {
    /// Asks the coordinator shard of a consumer group, locally or on its shard.
    pub async fn group(self: &Rc<Self>, group: &str, req: Request) -> Reply {
        self.group_on(group_owner(group, self.count), req).await
    }

    /// Asks one shard's group coordinator (ListGroups asks them all).
    pub async fn group_on(self: &Rc<Self>, owner: usize, req: Request) -> Reply {
        if owner == self.id {
            return self.groups.start(req).await;
        }
        self.core
            .invoke_on::<Shard, _, _, _>(owner, move |shard: &Rc<Shard>| shard.groups.start(req))
            .await
            .unwrap_or(Reply::Unavailable)
    }
}

/// One partition's committed offset as OffsetFetch reports it.
#[derive(Debug, Clone)]
pub struct FetchedOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub error: i16,
}

/// A commit of one partition.
pub struct CommitPart {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

pub enum Request {
    /// JoinGroup, with the group id and the catalog replica of the connection's shard (a
    /// classic member of a consumer group resolves its subscription with it).
    Join(
        JoinRequest,
        String,
        std::sync::Arc<crate::catalog::CatalogState>,
    ),
    Sync {
        group: String,
        member_id: String,
        instance_id: Option<String>,
        generation: i32,
        protocol_type: Option<String>,
        protocol_name: Option<String>,
        assignments: Vec<(String, Bytes)>,
        version: i16,
    },
    Heartbeat {
        group: String,
        member_id: String,
        instance_id: Option<String>,
        generation: i32,
    },
    /// (member id, instance id) pairs.
    Leave {
        group: String,
        members: Vec<(String, Option<String>)>,
    },
    Commit {
        group: String,
        member_id: String,
        instance_id: Option<String>,
        generation: i32,
        parts: Vec<CommitPart>,
    },
    /// A reader outside the group's membership (an AMQP stream consumer, `stream::group`):
    /// the committed offset of one partition, and whether a commit with no member may
    /// land (`Reply::Fetch` with UNKNOWN_MEMBER_ID while the group has Kafka members).
    Position {
        group: String,
        topic: String,
        partition: i32,
    },
    /// `None`: every committed offset of the group.
    Fetch {
        group: String,
        parts: Option<Vec<(String, i32)>>,
    },
    Describe(String),
    Delete(String),
    OffsetDelete {
        group: String,
        parts: Vec<(String, i32)>,
    },
    List,
    /// ConsumerGroupHeartbeat, with the catalog replica of the connection's shard.
    ConsumerHeartbeat {
        group: String,
        heartbeat: consumer::Heartbeat,
        catalog: std::sync::Arc<crate::catalog::CatalogState>,
    },
    ConsumerDescribe(String),
    /// OffsetFetch v9+ of a member: its id and epoch checked against a consumer group
    /// (`Reply::Code`; 0 as well for a group of the classic protocol or none).
    ConsumerCheck {
        group: String,
        member_id: String,
        epoch: i32,
    },
}

pub enum Reply {
    Join(JoinGroupResponse),
    Sync(SyncGroupResponse),
    Code(i16),
    Leave(i16, Vec<i16>),
    Commit(Vec<i16>),
    Fetch(i16, Vec<FetchedOffset>),
    Describe(DescribedGroup),
    OffsetDelete(i16, Vec<i16>),
    List(Vec<ListedGroup>),
    /// The heartbeat's answer and the heartbeat interval (ms) to tell the member.
    ConsumerHeartbeat(Result<consumer::Answer, consumer::Refusal>, i32),
    ConsumerDescribe(kafka_protocol::messages::consumer_group_describe_response::DescribedGroup),
    Unavailable,
}

/// A group as ListGroups and the management API show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupSummary {
    pub group: String,
    pub state: &'static str,
    pub protocol_type: String,
    pub members: usize,
    /// `classic` or `consumer` (the KIP-848 protocol), as ListGroups v5 names them.
    pub group_type: &'static str,
}

pub struct Coordinator {
    groups: RefCell<HashMap<String, Group>>,
    /// Groups of the consumer protocol (KIP-848); an id is in `groups` or here, never both
    /// with members (`consumer_coordinator.rs`).
    consumer_groups: RefCell<HashMap<String, consumer::ConsumerGroup>>,
    consumer_settings: consumer::Settings,
    offsets: RefCell<Offsets>,
    store: Rc<OffsetStore>,
    timeouts: Timeouts,
    loaded: Cell<bool>,
    /// Changes applied (durable and answered) and not yet appended to
    /// `__consumer_offsets`, in the order they were applied (`kafka::offsets_topic`).
    topic_records: RefCell<Vec<TopicRecord>>,
    topic_wake: Notify,
    /// The generation of each group whose metadata was last queued for the topic.
    recorded_generation: RefCell<HashMap<String, i32>>,
    /// Offsets of ongoing transactions (TxnOffsetCommit), until the transaction ends.
    pub txn_offsets: txn_offsets::TxnOffsets,
}

/// Records that wait for `__consumer_offsets` at most (see `requeue_topic_records`).
const MAX_WAITING_TOPIC_RECORDS: usize = 100_000;

/// How a stored offset change appears in `__consumer_offsets` (a deletion: a tombstone).
fn view_of(r: OffsetRecord) -> Option<TopicRecord> {
    match r {
        OffsetRecord::Commit {
            group,
            topic,
            partition,
            value,
        } => Some(TopicRecord::Offset {
            group,
            topic,
            partition,
            value: Some(value),
        }),
        OffsetRecord::Delete {
            group,
            topic,
            partition,
        } => Some(TopicRecord::Offset {
            group,
            topic,
            partition,
            value: None,
        }),
        OffsetRecord::DeleteGroup { .. } => None,
    }
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

impl Coordinator {
    /// Loads the committed offsets of this shard's groups.
    pub fn open(dir: &Path, config: &Config) -> std::io::Result<Rc<Coordinator>> {
        let (store, offsets) = OffsetStore::open(dir)?;
        let txn_offsets = txn_offsets::TxnOffsets::open(dir)?;
        let k = &config.kafka;
        Ok(Rc::new(Coordinator {
            groups: RefCell::new(HashMap::new()),
            consumer_groups: RefCell::new(HashMap::new()),
            consumer_settings: consumer::Settings {
                session_timeout: Duration::from_millis(k.group_consumer_session_timeout_ms),
                heartbeat_interval: Duration::from_millis(k.group_consumer_heartbeat_interval_ms),
                max_size: k.group_consumer_max_size as usize,
                upgrade: matches!(
                    k.group_consumer_migration_policy.as_str(),
                    "bidirectional" | "upgrade"
                ),
                downgrade: matches!(
                    k.group_consumer_migration_policy.as_str(),
                    "bidirectional" | "downgrade"
                ),
            },
            offsets: RefCell::new(offsets),
            store: Rc::new(store),
            timeouts: Timeouts {
                initial_rebalance_delay: Duration::from_millis(k.group_initial_rebalance_delay_ms),
                min_session: Duration::from_millis(k.group_min_session_timeout_ms),
                max_session: Duration::from_millis(k.group_max_session_timeout_ms),
            },
            loaded: Cell::new(true),
            topic_records: RefCell::new(Vec::new()),
            topic_wake: Notify::new(),
            recorded_generation: RefCell::new(HashMap::new()),
            txn_offsets,
        }))
    }

    /// Waits for, and takes, the changes not yet appended to `__consumer_offsets` (the
    /// shard's offsets-topic writer calls this).
    pub async fn take_topic_records(&self) -> Vec<TopicRecord> {
        loop {
            let listener = Listener::new();
            listener.listen(&self.topic_wake);
            let taken = std::mem::take(&mut *self.topic_records.borrow_mut());
            if !taken.is_empty() {
                return taken;
            }
            listener.await;
        }
    }

    /// Puts back records the writer could not append yet, ahead of newer ones. While the
    /// topic cannot take them (not created: the catalog refused it, a full disk) at most
    /// `MAX_WAITING_TOPIC_RECORDS` wait; older ones are dropped with a log line (the view
    /// only: the next commit of each partition writes its offset again).
    pub fn requeue_topic_records(&self, mut records: Vec<TopicRecord>) {
        let mut queue = self.topic_records.borrow_mut();
        records.append(&mut queue);
        if records.len() > MAX_WAITING_TOPIC_RECORDS {
            let dropped = records.len() - MAX_WAITING_TOPIC_RECORDS;
            records.drain(..dropped);
            log::warn!(
                "__consumer_offsets cannot be appended to: dropped its {dropped} oldest waiting \
                 records (the group store keeps every offset; later commits are written again)"
            );
        }
        *queue = records;
    }

    /// Queues every committed offset (first start with `__consumer_offsets`).
    pub fn queue_backfill(&self) {
        let records: Vec<TopicRecord> = self
            .live_records()
            .into_iter()
            .filter_map(view_of)
            .collect();
        self.queue_topic(records);
    }

    fn queue_topic(&self, records: Vec<TopicRecord>) {
        if records.is_empty() {
            return;
        }
        self.topic_records.borrow_mut().extend(records);
        self.topic_wake.notify();
    }

    /// Queues the metadata of `group` when a rebalance has completed since it was last
    /// queued: the group is Stable in a new generation, or became Empty.
    fn note_group(&self, group: &str) {
        let snapshot = {
            let groups = self.groups.borrow();
            let Some(g) = groups.get(group) else { return };
            let done = matches!(g.state, State::Stable | State::Empty) && g.generation > 0;
            if !done || self.recorded_generation.borrow().get(group) == Some(&g.generation) {
                return;
            }
            GroupSnapshot::of(g, crate::storage::log::now_ms())
        };
        self.recorded_generation
            .borrow_mut()
            .insert(group.to_owned(), snapshot.generation);
        self.queue_topic(vec![TopicRecord::Group {
            group: group.to_owned(),
            value: Some(snapshot),
        }]);
    }

    /// Background work: the offset writer (started by `broker::run_shard`, runs until
    /// the executor ends).
    pub fn run_offset_writer(self: &Rc<Self>) -> impl std::future::Future<Output = ()> {
        let me = self.clone();
        self.store.clone().run_writer(move || me.live_records())
    }

    /// Background work: the session and rebalance clock, every 100 ms (started by
    /// `broker::run_shard`, runs until the executor ends).
    pub async fn run_clock(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(Duration::from_millis(100)).await;
            let now = Instant::now();
            let ids: Vec<String> = {
                let mut groups = self.groups.borrow_mut();
                for g in groups.values_mut() {
                    g.tick(self.timeouts, now);
                }
                groups.keys().cloned().collect()
            };
            self.tick_consumer_groups(now);
            for id in ids {
                self.note_group(&id);
            }
        }
    }

    fn live_records(&self) -> Vec<OffsetRecord> {
        self.offsets
            .borrow()
            .iter()
            .flat_map(|(group, parts)| {
                parts
                    .iter()
                    .map(move |((topic, partition), value)| OffsetRecord::Commit {
                        group: group.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                        value: value.clone(),
                    })
            })
            .collect()
    }

    fn with_group<R>(&self, id: &str, f: impl FnOnce(&mut Group) -> R) -> R {
        let mut groups = self.groups.borrow_mut();
        let g = groups
            .entry(id.to_owned())
            .or_insert_with(|| Group::new(id));
        f(g)
    }

    fn group_exists(&self, id: &str) -> bool {
        self.groups
            .borrow()
            .get(id)
            .is_some_and(|g| !g.members.is_empty())
            || self.offsets.borrow().contains_key(id)
            || self.consumer_group_active(id)
    }

    /// Starts a request; waiting (for a rebalance or an fsync) happens in the future.
    pub fn start(self: &Rc<Self>, req: Request) -> LocalBoxFuture<'static, Reply> {
        if !self.loaded.get() {
            let code = ResponseError::CoordinatorLoadInProgress.code();
            return Box::pin(async move { Reply::Code(code) });
        }
        let now = Instant::now();
        let t = self.timeouts;
        match req {
            // A classic member of a consumer-protocol group with members: translated, or
            // refused when the migration policy is `disabled` (`consumer_coordinator.rs`).
            Request::Join(join, group, catalog) if self.consumer_group_active(&group) => {
                let reply = self.classic_join_consumer_group(&group, join, catalog, now);
                Box::pin(async move { reply })
            }
            Request::Sync {
                group,
                member_id,
                generation,
                ..
            } if self.consumer_group_active(&group) => {
                let reply = self.classic_sync_consumer_group(&group, &member_id, generation, now);
                Box::pin(async move { reply })
            }
            Request::Heartbeat {
                group,
                member_id,
                generation,
                ..
            } if self.consumer_group_active(&group) => {
                let code =
                    self.classic_heartbeat_consumer_group(&group, &member_id, generation, now);
                Box::pin(async move { Reply::Code(code) })
            }
            Request::Leave { group, members } if self.consumer_group_active(&group) => {
                let codes = self.classic_leave_consumer_group(&group, &members, now);
                Box::pin(async move { Reply::Leave(0, codes) })
            }
            Request::Join(join, group, _) => match self.with_group(&group, |g| {
                self.consumer_groups.borrow_mut().remove(&group);
                g.join(join, t, now)
            }) {
                JoinOutcome::Now(r) => Box::pin(async move { Reply::Join(r) }),
                JoinOutcome::Wait(rx) => Box::pin(async move {
                    match rx.await {
                        Ok(r) => Reply::Join(r),
                        Err(_) => Reply::Join(
                            JoinGroupResponse::default()
                                .with_error_code(ResponseError::UnknownMemberId.code())
                                .with_generation_id(-1),
                        ),
                    }
                }),
            },
            Request::Sync {
                group,
                member_id,
                instance_id,
                generation,
                protocol_type,
                protocol_name,
                assignments,
                version,
            } => {
                let outcome = self.with_group(&group, |g| {
                    g.sync(
                        &member_id,
                        instance_id.as_deref(),
                        generation,
                        protocol_type.as_deref(),
                        protocol_name.as_deref(),
                        assignments,
                        version,
                        now,
                    )
                });
                self.note_group(&group);
                match outcome {
                    SyncOutcome::Now(r) => Box::pin(async move { Reply::Sync(r) }),
                    SyncOutcome::Wait(rx) => Box::pin(async move {
                        Reply::Sync(rx.await.unwrap_or_else(|_| {
                            SyncGroupResponse::default()
                                .with_error_code(ResponseError::RebalanceInProgress.code())
                        }))
                    }),
                }
            }
            Request::Heartbeat {
                group,
                member_id,
                instance_id,
                generation,
            } => {
                let code = self.with_group(&group, |g| {
                    g.heartbeat(&member_id, instance_id.as_deref(), generation, now)
                });
                Box::pin(async move { Reply::Code(code) })
            }
            Request::Leave { group, members } => {
                let codes: Vec<i16> = self.with_group(&group, |g| {
                    members
                        .iter()
                        .map(|(m, i)| g.leave(m, i.as_deref(), t, now))
                        .collect()
                });
                self.note_group(&group);
                Box::pin(async move { Reply::Leave(0, codes) })
            }
            Request::Commit {
                group,
                member_id,
                instance_id,
                generation,
                parts,
            } => self.commit(group, member_id, instance_id, generation, parts),
            Request::Position {
                group,
                topic,
                partition,
            } => {
                // As a commit with generation -1 and no member id would be checked.
                let check = self
                    .consumer_check_commit(&group, "", -1)
                    .or_else(|| {
                        let groups = self.groups.borrow();
                        groups.get(&group).map(|g| g.check_commit("", None, -1))
                    })
                    .unwrap_or(Ok(()));
                let committed = self
                    .offsets
                    .borrow()
                    .get(&group)
                    .and_then(|g| g.get(&(topic.clone(), partition)))
                    .map_or(-1, |c| c.offset);
                let reply = match check {
                    Ok(()) => Reply::Fetch(
                        0,
                        vec![FetchedOffset {
                            topic,
                            partition,
                            offset: committed,
                            leader_epoch: -1,
                            metadata: None,
                            error: 0,
                        }],
                    ),
                    Err(code) => Reply::Fetch(code, Vec::new()),
                };
                Box::pin(async move { reply })
            }
            Request::Fetch { group, parts } => {
                let offsets = self.offsets.borrow();
                let committed = offsets.get(&group);
                let lookup = |topic: &str, partition: i32| -> FetchedOffset {
                    let c = committed.and_then(|g| g.get(&(topic.to_owned(), partition)));
                    FetchedOffset {
                        topic: topic.to_owned(),
                        partition,
                        offset: c.map(|c| c.offset).unwrap_or(-1),
                        leader_epoch: c.map(|c| c.leader_epoch).unwrap_or(-1),
                        metadata: Some(c.map(|c| c.metadata.clone()).unwrap_or_default()),
                        error: 0,
                    }
                };
                let out = match parts {
                    Some(parts) => parts.iter().map(|(t, p)| lookup(t, *p)).collect(),
                    None => {
                        let mut all: Vec<(String, i32)> = committed
                            .map(|g| g.keys().cloned().collect())
                            .unwrap_or_default();
                        all.sort();
                        all.iter().map(|(t, p)| lookup(t, *p)).collect()
                    }
                };
                Box::pin(async move { Reply::Fetch(0, out) })
            }
            Request::Describe(group) => {
                let d = self.describe(&group);
                Box::pin(async move { Reply::Describe(d) })
            }
            Request::Delete(group) => self.delete(group),
            Request::OffsetDelete { group, parts } => self.offset_delete(group, parts),
            Request::List => {
                let list = self
                    .summary()
                    .into_iter()
                    .map(|g| {
                        ListedGroup::default()
                            .with_group_id(GroupId(s(&g.group)))
                            .with_protocol_type(s(&g.protocol_type))
                            .with_group_state(s(g.state))
                            .with_group_type(s(g.group_type))
                    })
                    .collect();
                Box::pin(async move { Reply::List(list) })
            }
            Request::ConsumerHeartbeat {
                group,
                heartbeat,
                catalog,
            } => {
                let reply = self.consumer_heartbeat(&group, heartbeat, catalog, now);
                Box::pin(async move { reply })
            }
            Request::ConsumerCheck {
                group,
                member_id,
                epoch,
            } => {
                let code = match self.consumer_check_commit(&group, &member_id, epoch) {
                    Some(Err(code)) => code,
                    _ => 0,
                };
                Box::pin(async move { Reply::Code(code) })
            }
            Request::ConsumerDescribe(group) => {
                let d = self.consumer_describe(&group);
                Box::pin(async move { Reply::ConsumerDescribe(d) })
            }
        }
    }

    fn commit(
        self: &Rc<Self>,
        group: String,
        member_id: String,
        instance_id: Option<String>,
        generation: i32,
        parts: Vec<CommitPart>,
    ) -> LocalBoxFuture<'static, Reply> {
        let check = match self.consumer_check_commit(&group, &member_id, generation) {
            Some(check) => check,
            None => self.with_group(&group, |g| {
                g.check_commit(&member_id, instance_id.as_deref(), generation)
            }),
        };
        if let Err(code) = check {
            let codes = vec![code; parts.len()];
            return Box::pin(async move { Reply::Commit(codes) });
        }
        let now_ms = crate::storage::log::now_ms();
        let mut codes = Vec::with_capacity(parts.len());
        let mut records = Vec::new();
        for p in parts {
            if p.metadata.as_ref().is_some_and(|m| m.len() > 4096) {
                codes.push(ResponseError::OffsetMetadataTooLarge.code());
                continue;
            }
            codes.push(0);
            records.push(OffsetRecord::Commit {
                group: group.clone(),
                topic: p.topic,
                partition: p.partition,
                value: Committed {
                    offset: p.offset,
                    leader_epoch: p.leader_epoch,
                    metadata: p.metadata.unwrap_or_default(),
                    commit_ms: now_ms,
                },
            });
        }
        let me = self.clone();
        Box::pin(async move {
            if records.is_empty() {
                return Reply::Commit(codes);
            }
            match me.store.append(&records).await {
                Ok(()) => {
                    let mut offsets = me.offsets.borrow_mut();
                    for r in &records {
                        store::apply(&mut offsets, r);
                    }
                    drop(offsets);
                    me.queue_topic(records.into_iter().filter_map(view_of).collect());
                    Reply::Commit(codes)
                }
                Err(e) => {
                    log::error!("committing offsets of group {group}: {e}");
                    let code = ResponseError::CoordinatorNotAvailable.code();
                    Reply::Commit(
                        codes
                            .into_iter()
                            .map(|c| if c == 0 { code } else { c })
                            .collect(),
                    )
                }
            }
        })
    }

    fn describe(&self, id: &str) -> DescribedGroup {
        if self.consumer_groups.borrow().contains_key(id) {
            // As Kafka 4: DescribeGroups describes classic groups only.
            return DescribedGroup::default()
                .with_group_id(GroupId(s(id)))
                .with_group_state(s("Dead"))
                .with_error_code(ResponseError::GroupIdNotFound.code())
                .with_error_message(Some(s(&format!("Group {id} is not a classic group."))));
        }
        let groups = self.groups.borrow();
        let base = DescribedGroup::default().with_group_id(GroupId(s(id)));
        match groups.get(id) {
            Some(g) if !g.members.is_empty() => base
                .with_group_state(s(g.state.name()))
                .with_protocol_type(s(g.protocol_type.as_deref().unwrap_or("")))
                .with_protocol_data(s(g.protocol.as_deref().unwrap_or("")))
                .with_members(
                    g.members
                        .values()
                        .map(|m| {
                            DescribedGroupMember::default()
                                .with_member_id(s(&m.id))
                                .with_group_instance_id(m.instance_id.as_deref().map(s))
                                .with_client_id(s(&m.client_id))
                                .with_client_host(s(&m.client_host))
                                .with_member_metadata(g.member_metadata(m))
                                .with_member_assignment(m.assignment.clone())
                        })
                        .collect(),
                ),
            _ if self.offsets.borrow().contains_key(id) => base
                .with_group_state(s("Empty"))
                .with_protocol_type(s("consumer")),
            _ => base
                .with_group_state(s("Dead"))
                .with_error_code(ResponseError::GroupIdNotFound.code()),
        }
    }

    fn delete(self: &Rc<Self>, group: String) -> LocalBoxFuture<'static, Reply> {
        if !self.group_exists(&group) {
            let code = ResponseError::GroupIdNotFound.code();
            return Box::pin(async move { Reply::Code(code) });
        }
        if self
            .groups
            .borrow()
            .get(&group)
            .is_some_and(|g| !g.members.is_empty())
            || self.consumer_group_active(&group)
        {
            let code = ResponseError::NonEmptyGroup.code();
            return Box::pin(async move { Reply::Code(code) });
        }
        let me = self.clone();
        Box::pin(async move {
            let record = OffsetRecord::DeleteGroup {
                group: group.clone(),
            };
            match me.store.append(std::slice::from_ref(&record)).await {
                Ok(()) => {
                    let mut view: Vec<TopicRecord> = me
                        .offsets
                        .borrow()
                        .get(&group)
                        .map(|parts| {
                            parts
                                .keys()
                                .map(|(topic, partition)| TopicRecord::Offset {
                                    group: group.clone(),
                                    topic: topic.clone(),
                                    partition: *partition,
                                    value: None,
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    view.push(TopicRecord::Group {
                        group: group.clone(),
                        value: None,
                    });
                    store::apply(&mut me.offsets.borrow_mut(), &record);
                    me.groups.borrow_mut().remove(&group);
                    me.consumer_groups.borrow_mut().remove(&group);
                    me.recorded_generation.borrow_mut().remove(&group);
                    me.queue_topic(view);
                    Reply::Code(0)
                }
                Err(_) => Reply::Code(ResponseError::CoordinatorNotAvailable.code()),
            }
        })
    }

    fn offset_delete(
        self: &Rc<Self>,
        group: String,
        parts: Vec<(String, i32)>,
    ) -> LocalBoxFuture<'static, Reply> {
        if !self.group_exists(&group) {
            let code = ResponseError::GroupIdNotFound.code();
            return Box::pin(async move { Reply::OffsetDelete(code, Vec::new()) });
        }
        let subscribed = self
            .groups
            .borrow()
            .get(&group)
            .filter(|g| !g.members.is_empty() && g.state != State::Empty)
            .map(|g| g.subscribed_topics())
            .unwrap_or_default()
            .into_iter()
            .chain(self.consumer_subscribed_topics(&group))
            .collect::<Vec<String>>();
        let mut codes = Vec::with_capacity(parts.len());
        let mut records = Vec::new();
        for (topic, partition) in parts {
            if subscribed.contains(&topic) {
                codes.push(ResponseError::GroupSubscribedToTopic.code());
            } else {
                codes.push(0);
                records.push(OffsetRecord::Delete {
                    group: group.clone(),
                    topic,
                    partition,
                });
            }
        }
        let me = self.clone();
        Box::pin(async move {
            if records.is_empty() {
                return Reply::OffsetDelete(0, codes);
            }
            match me.store.append(&records).await {
                Ok(()) => {
                    let mut offsets = me.offsets.borrow_mut();
                    for r in &records {
                        store::apply(&mut offsets, r);
                    }
                    drop(offsets);
                    me.queue_topic(records.into_iter().filter_map(view_of).collect());
                    Reply::OffsetDelete(0, codes)
                }
                Err(_) => Reply::OffsetDelete(ResponseError::CoordinatorNotAvailable.code(), codes),
            }
        })
    }

    /// Every group this shard coordinates (with members or committed offsets), by id.
    pub fn summary(&self) -> Vec<GroupSummary> {
        let mut ids: Vec<String> = self.groups.borrow().keys().cloned().collect();
        ids.extend(self.offsets.borrow().keys().cloned());
        ids.extend(self.consumer_groups.borrow().keys().cloned());
        ids.sort();
        ids.dedup();
        let groups = self.groups.borrow();
        ids.into_iter()
            .filter(|id| self.group_exists(id) || self.consumer_groups.borrow().contains_key(id))
            .map(|id| match groups.get(&id) {
                _ if self.consumer_groups.borrow().contains_key(&id) => self.consumer_summary(&id),
                Some(g) if !g.members.is_empty() => GroupSummary {
                    state: g.state.name(),
                    protocol_type: g.protocol_type.clone().unwrap_or_default(),
                    members: g.members.len(),
                    group_type: "classic",
                    group: id,
                },
                _ => GroupSummary {
                    group: id,
                    state: "Empty",
                    protocol_type: "consumer".to_owned(),
                    members: 0,
                    group_type: "classic",
                },
            })
            .collect()
    }

    /// Committed offsets of every group on this shard (for lag metrics and tests).
    pub fn committed(&self) -> Vec<(String, String, i32, i64)> {
        let offsets = self.offsets.borrow();
        let mut out: Vec<_> = offsets
            .iter()
            .flat_map(|(g, parts)| {
                parts
                    .iter()
                    .map(move |((t, p), c)| (g.clone(), t.clone(), *p, c.offset))
            })
            .collect();
        out.sort();
        out
    }
}
