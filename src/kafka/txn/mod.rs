//! The transaction coordinator (KIP-98): transactional producer ids and epochs, the
//! partitions and groups of each ongoing transaction, its commit or abort, and the markers
//! that settle it in every partition.
//!
//! Each transactional id is coordinated by one shard, `txn_owner(id)` (the groups' hash,
//! `groups::group_owner`, so one function places both); every shard has a `Coordinator`
//! for the ids that hash to it. Handlers on the connection's shard send the decoded
//! request there with `Shard::txn` (the one line where the work crosses shards).
//!
//! Durability: every state a client is told about is in the shard's transaction log
//! first (`<data_dir>/<shard>/transactions/transactions.log`, `storage::record_log::RecordLog`: one rkyv
//! `TxnMeta` per change, fdatasync'ed, group-committed; the last record of an id wins).
//! EndTxn is answered once PrepareCommit/PrepareAbort is durable; the markers are then
//! written to every partition of the transaction through their owners
//! (`Shard::write_txn_markers`) and the groups' pending offsets committed or dropped
//! (`groups::txn_offsets`), and only then is CompleteCommit/CompleteAbort recorded. A
//! restart finds the Prepare states in the log and completes them in the background
//! (`start`; startup does not wait), so a transaction is visible everywhere or nowhere.
//!
//! Timeouts: an index of ongoing transactions by deadline (`deadlines`) is read by a
//! 100 ms clock per shard (`run_clock`, asleep while no transaction is open); an expired transaction is aborted with an epoch
//! bump, so its producer is fenced. A request never scans the transactions.
//!
//! One state change per id at a time: while a change of an id is being made durable, other
//! changes of it are answered CONCURRENT_TRANSACTIONS (clients retry), as Kafka does.
//! A request that finds its id completing (markers being written after EndTxn) waits up to
//! `SETTLE_WAIT` for the completion before it is refused the same way, so a producer that
//! starts its next transaction right after a commit is answered when the markers are in
//! rather than told to retry after its backoff.

pub mod producer_id;
pub mod state;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;

use self::state::{EndOutcome, InitOutcome, TxnError, TxnMeta, TxnState};
use crate::broker::Shard;
use crate::config::Config;
use crate::kafka::owner::TxnMarker;
use crate::storage::log::now_ms;
use crate::storage::record_log::{self, RecordLog};
use crate::util::notify::{Listener, Notify};

/// The shard that coordinates transactional id `id`.
pub fn txn_owner(id: &str, shards: usize) -> usize {
    crate::kafka::groups::group_owner(id, shards)
}

/// What a handler asks of a transactional id's coordinator.
pub enum Request {
    /// InitProducerId with a transactional id; `expected`: the client's producer id and
    /// epoch (KIP-360), when it has one.
    Init {
        id: String,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    },
    AddPartitions {
        id: String,
        producer_id: i64,
        epoch: i16,
        parts: Vec<(String, i32)>,
    },
    AddGroup {
        id: String,
        producer_id: i64,
        epoch: i16,
        group: String,
    },
    /// Whether each partition is in the producer's ongoing transaction (KIP-890).
    Verify {
        id: String,
        producer_id: i64,
        epoch: i16,
        parts: Vec<(String, i32)>,
    },
    VerifyGroup {
        id: String,
        producer_id: i64,
        epoch: i16,
        group: String,
    },
    End {
        id: String,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    },
    Describe(Vec<String>),
    List,
}

pub enum Reply {
    Init(Result<(i64, i16), TxnError>),
    Done(Result<(), TxnError>),
    /// Verify: the producer's error, else per partition whether it is in the transaction.
    Verified(Result<Vec<bool>, TxnError>),
    Described(Vec<(String, Option<TxnMeta>)>),
    Listed(Vec<TxnMeta>),
    Unavailable,
}

impl Shard {
    /// Asks the coordinator of transactional id `id`, locally or on its shard.
    pub async fn txn(self: &Rc<Self>, id: &str, req: Request) -> Reply {
        self.txn_on(txn_owner(id, self.count), req).await
    }

    /// Asks the coordinator of `id` for a change that answers `Reply::Done`, as the error
    /// code a request of `version` gets (PRODUCER_FENCED from `fenced_since` on);
    /// COORDINATOR_NOT_AVAILABLE when the coordinator could not answer.
    pub async fn txn_code(
        self: &Rc<Self>,
        id: &str,
        req: Request,
        version: i16,
        fenced_since: i16,
    ) -> i16 {
        match self.txn(id, req).await {
            Reply::Done(Ok(())) => 0,
            Reply::Done(Err(e)) => e.code(version, fenced_since),
            _ => kafka_protocol::ResponseError::CoordinatorNotAvailable.code(),
        }
    }

    /// Asks one shard's transaction coordinator (ListTransactions asks them all).
    pub async fn txn_on(self: &Rc<Self>, owner: usize, req: Request) -> Reply {
        if owner == self.id {
            return self.txn.start(self, req).await;
        }
        self.core
            .invoke_on::<Shard, _, _, _>(owner, move |shard: &Rc<Shard>| {
                let shard = shard.clone();
                async move { shard.txn.start(&shard, req).await }
            })
            .await
            .unwrap_or(Reply::Unavailable)
    }
}

pub struct Coordinator {
    txns: RefCell<HashMap<String, TxnMeta>>,
    /// Ongoing transactions by (deadline ms, id): the clock pops the expired ones.
    deadlines: RefCell<BTreeSet<(i64, String)>>,
    /// Wakes the clock, which sleeps while `deadlines` is empty.
    deadline_added: Notify,
    /// Ids with a state change being made durable.
    busy: RefCell<HashSet<String>>,
    log: Rc<RecordLog>,
    max_timeout_ms: u64,
    shard_id: usize,
    /// Fired whenever a transaction reaches CompleteCommit/CompleteAbort.
    completed: Notify,
}

const LOG: &str = "transactions.log";

/// How long a request waits for its id's Prepare state to complete (see the module doc).
const SETTLE_WAIT: Duration = Duration::from_secs(1);

fn encode(meta: &TxnMeta) -> Result<Vec<u8>, TxnError> {
    rkyv::to_bytes::<rkyv::rancor::Error>(meta)
        .map(|b| b.to_vec())
        .map_err(|_| TxnError::NotAvailable)
}

fn decode(payload: &[u8]) -> Option<TxnMeta> {
    record_log::decode(payload)
}

/// Releases an id's claim when the change is done (or its future dropped).
struct Claim {
    coordinator: Rc<Coordinator>,
    id: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.coordinator.busy.borrow_mut().remove(&self.id);
    }
}

impl Coordinator {
    /// Loads this shard's transactional ids from its transaction log.
    pub fn open(dir: &Path, config: &Config, shard_id: usize) -> std::io::Result<Rc<Coordinator>> {
        let (log, payloads) = RecordLog::open(dir, LOG)?;
        let mut txns = HashMap::new();
        for p in &payloads {
            match decode(p) {
                Some(meta) => {
                    txns.insert(meta.id.clone(), meta);
                }
                None => {
                    ::log::warn!(
                        "{}: skipping a record that does not decode",
                        dir.join(LOG).display()
                    );
                }
            }
        }
        let deadlines = txns
            .values()
            .filter_map(|m| m.deadline_ms().map(|d| (d, m.id.clone())))
            .collect();
        Ok(Rc::new(Coordinator {
            txns: RefCell::new(txns),
            deadlines: RefCell::new(deadlines),
            deadline_added: Notify::new(),
            busy: RefCell::new(HashSet::new()),
            log: Rc::new(log),
            max_timeout_ms: config.kafka.transaction_max_timeout_ms,
            shard_id,
            completed: Notify::new(),
        }))
    }

    /// Background work: the log writer (started by `broker::run_shard`, runs until the
    /// executor ends).
    pub fn run_log_writer(self: &Rc<Self>) -> impl std::future::Future<Output = ()> {
        let me = self.clone();
        self.log.clone().run_writer(move || {
            me.txns
                .borrow()
                .values()
                .filter_map(|m| encode(m).ok())
                .collect()
        })
    }

    fn get(&self, id: &str) -> Option<TxnMeta> {
        self.txns.borrow().get(id).cloned()
    }

    /// Waits (at most `SETTLE_WAIT`) while `id` is completing a transaction.
    async fn settled(&self, id: &str) {
        let deadline = Instant::now() + SETTLE_WAIT;
        loop {
            let listener = Listener::new();
            listener.listen(&self.completed);
            let preparing = self
                .txns
                .borrow()
                .get(id)
                .is_some_and(|m| m.state.preparing());
            let left = deadline.saturating_duration_since(Instant::now());
            if !preparing || left.is_zero() {
                return;
            }
            let _ = glommio::timer::timeout(left, async {
                listener.await;
                Ok(())
            })
            .await;
        }
    }

    fn claim(self: &Rc<Self>, id: &str) -> Result<Claim, TxnError> {
        if !self.busy.borrow_mut().insert(id.to_owned()) {
            return Err(TxnError::ConcurrentTransactions);
        }
        Ok(Claim {
            coordinator: self.clone(),
            id: id.to_owned(),
        })
    }

    /// Makes `meta` durable, then installs it (the deadline index follows).
    async fn persist(&self, meta: TxnMeta) -> Result<(), TxnError> {
        let bytes = encode(&meta)?;
        if let Err(e) = self.log.append(&[bytes]).await {
            ::log::error!("transaction log: recording {}: {e}", meta.id);
            return Err(TxnError::NotAvailable);
        }
        let mut deadlines = self.deadlines.borrow_mut();
        if let Some(old) = self
            .txns
            .borrow()
            .get(&meta.id)
            .and_then(|m| m.deadline_ms())
        {
            deadlines.remove(&(old, meta.id.clone()));
        }
        if let Some(d) = meta.deadline_ms() {
            deadlines.insert((d, meta.id.clone()));
            self.deadline_added.notify();
        }
        drop(deadlines);
        self.txns.borrow_mut().insert(meta.id.clone(), meta);
        Ok(())
    }

    fn new_producer_id(&self) -> i64 {
        producer_id::allocate(self.shard_id)
    }

    /// Starts a request; waiting (for the log) happens in the returned future.
    pub fn start(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        req: Request,
    ) -> LocalBoxFuture<'static, Reply> {
        let me = self.clone();
        let shard = shard.clone();
        match req {
            Request::Init {
                id,
                timeout_ms,
                expected,
            } => Box::pin(
                async move { Reply::Init(me.init(&shard, id, timeout_ms, expected).await) },
            ),
            Request::AddPartitions {
                id,
                producer_id,
                epoch,
                parts,
            } => Box::pin(async move {
                let now = now_ms();
                Reply::Done(
                    me.change(&id, |m| m.add_partitions(producer_id, epoch, &parts, now))
                        .await,
                )
            }),
            Request::AddGroup {
                id,
                producer_id,
                epoch,
                group,
            } => Box::pin(async move {
                let now = now_ms();
                Reply::Done(
                    me.change(&id, |m| m.add_group(producer_id, epoch, &group, now))
                        .await,
                )
            }),
            Request::Verify {
                id,
                producer_id,
                epoch,
                parts,
            } => {
                let answer = match self.get(&id) {
                    None => Err(TxnError::InvalidProducerIdMapping),
                    Some(m) => parts
                        .iter()
                        .map(|p| match m.verify(producer_id, epoch, p) {
                            Ok(()) => Ok(true),
                            Err(TxnError::InvalidTxnState) => Ok(false),
                            Err(e) => Err(e),
                        })
                        .collect(),
                };
                Box::pin(async move { Reply::Verified(answer) })
            }
            Request::VerifyGroup {
                id,
                producer_id,
                epoch,
                group,
            } => {
                let answer = match self.get(&id) {
                    None => Err(TxnError::InvalidProducerIdMapping),
                    Some(m) => m.verify_group(producer_id, epoch, &group),
                };
                Box::pin(async move { Reply::Done(answer) })
            }
            Request::End {
                id,
                producer_id,
                epoch,
                commit,
            } => Box::pin(async move {
                Reply::Done(me.end(&shard, id, producer_id, epoch, commit).await)
            }),
            Request::Describe(ids) => {
                let out = ids
                    .into_iter()
                    .map(|id| {
                        let m = self.get(&id);
                        (id, m)
                    })
                    .collect();
                Box::pin(async move { Reply::Described(out) })
            }
            Request::List => {
                let mut all: Vec<TxnMeta> = self.txns.borrow().values().cloned().collect();
                all.sort_by(|a, b| a.id.cmp(&b.id));
                Box::pin(async move { Reply::Listed(all) })
            }
        }
    }

    /// A change of a known id decided by `f` (None: nothing to persist).
    async fn change(
        self: &Rc<Self>,
        id: &str,
        f: impl FnOnce(&TxnMeta) -> Result<Option<TxnMeta>, TxnError>,
    ) -> Result<(), TxnError> {
        self.settled(id).await;
        let Some(current) = self.get(id) else {
            return Err(TxnError::InvalidProducerIdMapping);
        };
        let _claim = self.claim(id)?;
        match f(&current)? {
            Some(next) => self.persist(next).await,
            None => Ok(()),
        }
    }

    async fn init(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        id: String,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), TxnError> {
        if timeout_ms <= 0 || timeout_ms as u64 > self.max_timeout_ms {
            return Err(TxnError::InvalidTransactionTimeout);
        }
        // Twice at most: an ongoing transaction of the old instance is aborted first, and
        // the answer given once its markers are written (within `SETTLE_WAIT`).
        for attempt in 0..2 {
            self.settled(&id).await;
            let claim = self.claim(&id)?;
            let now = now_ms();
            let outcome = match self.get(&id) {
                None => {
                    InitOutcome::Ready(TxnMeta::new(&id, self.new_producer_id(), timeout_ms, now))
                }
                Some(m) => m.init(timeout_ms, expected, now, || self.new_producer_id())?,
            };
            match outcome {
                InitOutcome::Ready(next) => {
                    let answer = (next.producer_id, next.producer_epoch);
                    if self.get(&id).as_ref() != Some(&next) {
                        self.persist(next).await?;
                    }
                    return Ok(answer);
                }
                InitOutcome::AbortFirst(next) => {
                    if attempt > 0 {
                        break;
                    }
                    self.persist(next.clone()).await?;
                    drop(claim);
                    spawn_completion(shard, next);
                }
            }
        }
        Err(TxnError::ConcurrentTransactions)
    }

    async fn end(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        id: String,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(), TxnError> {
        let Some(current) = self.get(&id) else {
            return Err(TxnError::InvalidProducerIdMapping);
        };
        let claim = self.claim(&id)?;
        match current.end(producer_id, epoch, commit, now_ms())? {
            EndOutcome::AlreadyDone => Ok(()),
            EndOutcome::Prepare(next) => {
                self.persist(next.clone()).await?;
                drop(claim);
                spawn_completion(shard, next);
                Ok(())
            }
        }
    }

    /// Aborts the ongoing transactions past their deadline (the clock calls this).
    async fn expire_due(self: &Rc<Self>, shard: &Rc<Shard>) {
        let now = now_ms();
        let due: Vec<String> = self
            .deadlines
            .borrow()
            .iter()
            .take_while(|(d, _)| *d <= now)
            .map(|(_, id)| id.clone())
            .collect();
        for id in due {
            let Ok(claim) = self.claim(&id) else { continue };
            let Some(next) = self
                .get(&id)
                .and_then(|m| m.expire(now, || self.new_producer_id()))
            else {
                continue;
            };
            ::log::info!(
                "transactional id {id}: transaction open longer than its timeout ({} ms), aborting",
                next.timeout_ms
            );
            if self.persist(next.clone()).await.is_ok() {
                drop(claim);
                spawn_completion(shard, next);
            }
        }
    }

    /// Background work: the timeout clock, every 100 ms while a transaction is open, asleep
    /// while none is (started by `start`).
    async fn run_clock(shard: Rc<Shard>) {
        loop {
            if shard.txn.deadlines.borrow().is_empty() {
                let listener = Listener::new();
                listener.listen(&shard.txn.deadline_added);
                listener.await;
            } else {
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
            shard.txn.expire_due(&shard).await;
        }
    }
}

/// End of startup, on every shard: completes the transactions the log left in a Prepare
/// state (in the background: startup does not wait for their markers) and starts the
/// timeout clock.
pub fn start(shard: &Rc<Shard>) {
    let preparing: Vec<TxnMeta> = shard
        .txn
        .txns
        .borrow()
        .values()
        .filter(|m| m.state.preparing())
        .cloned()
        .collect();
    for meta in preparing {
        ::log::info!(
            "transactional id {}: completing its {} after restart",
            meta.id,
            if meta.state == TxnState::PrepareCommit {
                "commit"
            } else {
                "abort"
            }
        );
        spawn_completion(shard, meta);
    }
    glommio::spawn_local(Coordinator::run_clock(shard.clone())).detach();
}

fn spawn_completion(shard: &Rc<Shard>, meta: TxnMeta) {
    glommio::spawn_local(complete(shard.clone(), meta)).detach();
}

/// Settles a Prepare state: the markers in every partition (retried until each owner
/// takes them; a partition that no longer exists is done), the groups' pending offsets
/// committed or dropped, then CompleteCommit/CompleteAbort recorded.
async fn complete(shard: Rc<Shard>, meta: TxnMeta) {
    let commit = meta.state == TxnState::PrepareCommit;
    let marker = || TxnMarker {
        producer_id: meta.producer_id,
        producer_epoch: meta.producer_epoch,
        commit,
        coordinator_epoch: 0,
    };
    let mut backoff = Duration::from_millis(50);
    let mut parts = meta.partitions.clone();
    while !parts.is_empty() {
        let codes = shard.write_txn_markers(marker(), parts.clone()).await;
        let unknown = kafka_protocol::ResponseError::UnknownTopicOrPartition.code();
        let left: Vec<(String, i32)> = parts
            .into_iter()
            .zip(codes.into_iter().chain(std::iter::repeat(-1)))
            .filter(|(_, c)| *c != 0 && *c != unknown)
            .map(|(p, _)| p)
            .collect();
        if !left.is_empty() {
            ::log::warn!(
                "transactional id {}: markers not yet written to {} partitions, retrying",
                meta.id,
                left.len()
            );
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        parts = left;
    }
    for group in &meta.groups {
        let mut backoff = Duration::from_millis(50);
        while let Err(e) = shard.txn_offsets_end(group, meta.producer_id, commit).await {
            ::log::warn!(
                "transactional id {}: settling the offsets of group {group}: {e}; retrying",
                meta.id
            );
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
    // The markers carry the fencing epoch; the completed state keeps it.
    let done = meta.complete(now_ms());
    let coordinator = shard.txn.clone();
    let mut backoff = Duration::from_millis(50);
    while coordinator.persist(done.clone()).await.is_err() {
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    coordinator.completed.notify();
}
