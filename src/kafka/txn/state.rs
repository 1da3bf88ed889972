//! One transactional id's state and the transitions Kafka's transaction coordinator makes
//! (KIP-98, KIP-360, KIP-588): a pure state machine, the wall clock passed in, no I/O.
//! `txn::Coordinator` persists each new state before it answers the client and writes the
//! markers; this file only decides.
//!
//! ```text
//! Empty ──AddPartitions/AddOffsets──▶ Ongoing ──EndTxn(commit)──▶ PrepareCommit ──markers──▶ CompleteCommit
//!   ▲                                   │ └──EndTxn(abort), timeout,                          │
//!   │                                   │     InitProducerId (fencing)──▶ PrepareAbort ──▶ CompleteAbort
//!   └──────────InitProducerId (epoch bump)────────────────────────────────────────────────────┘
//! ```

use rkyv::{Archive, Deserialize, Serialize};

/// The states of Kafka's `TransactionState`, with its names for Describe/ListTransactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
}

impl TxnState {
    pub const ALL: [TxnState; 7] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
        TxnState::Dead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
        }
    }

    pub fn from_name(name: &str) -> Option<TxnState> {
        TxnState::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Markers are (being) written: the outcome is decided, the client waits.
    pub fn preparing(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// Why a transactional request is refused; `code` maps it to the Kafka error for the
/// request's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    #[error("a transaction of this id is being completed; retry")]
    ConcurrentTransactions,
    #[error("a newer producer with the same transactional id fenced this one")]
    ProducerFenced,
    #[error("the producer id does not belong to this transactional id")]
    InvalidProducerIdMapping,
    #[error("the request does not fit the transaction's state")]
    InvalidTxnState,
    #[error("transaction.timeout.ms is above transaction.max.timeout.ms or not positive")]
    InvalidTransactionTimeout,
    #[error("the coordinator could not make the change durable")]
    NotAvailable,
}

impl TxnError {
    /// The Kafka error code. PRODUCER_FENCED exists since KIP-588; a request version older
    /// than `fenced_since` gets INVALID_PRODUCER_EPOCH instead, as Kafka answers it.
    pub fn code(self, version: i16, fenced_since: i16) -> i16 {
        use kafka_protocol::ResponseError as E;
        match self {
            TxnError::ConcurrentTransactions => E::ConcurrentTransactions.code(),
            TxnError::ProducerFenced if version < fenced_since => E::InvalidProducerEpoch.code(),
            TxnError::ProducerFenced => E::ProducerFenced.code(),
            TxnError::InvalidProducerIdMapping => E::InvalidProducerIdMapping.code(),
            TxnError::InvalidTxnState => E::InvalidTxnState.code(),
            TxnError::InvalidTransactionTimeout => E::InvalidTransactionTimeout.code(),
            TxnError::NotAvailable => E::CoordinatorNotAvailable.code(),
        }
    }
}

/// One transactional id, as the transaction log records it.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct TxnMeta {
    pub id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The id and epoch before the last bump, so a retried InitProducerId (KIP-360) gets
    /// the same answer; -1 when none.
    pub last_producer_id: i64,
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// Partitions of the ongoing (or completing) transaction, sorted, no duplicates.
    pub partitions: Vec<(String, i32)>,
    /// Consumer groups whose offsets the transaction commits (AddOffsetsToTxn), sorted.
    pub groups: Vec<String>,
    /// Wall-clock ms the ongoing transaction started (-1 when none).
    pub start_ms: i64,
    pub update_ms: i64,
}

/// What InitProducerId does.
#[derive(Debug, Clone, PartialEq)]
pub enum InitOutcome {
    /// Persist this state (unless unchanged) and answer its producer id and epoch.
    Ready(TxnMeta),
    /// An ongoing transaction of the old epoch must be aborted first: persist this
    /// PrepareAbort state (epoch bumped: the old producer is fenced), write its markers,
    /// answer CONCURRENT_TRANSACTIONS (the client retries).
    AbortFirst(TxnMeta),
}

/// What EndTxn does.
#[derive(Debug, Clone, PartialEq)]
pub enum EndOutcome {
    /// Persist this Prepare state, answer success, then write the markers.
    Prepare(TxnMeta),
    /// A retry of an EndTxn that already completed with this outcome: success.
    AlreadyDone,
}

/// Epochs stop here: the next bump takes a new producer id (Kafka keeps `Short.MaxValue`
/// for markers written past the last client epoch).
const LAST_EPOCH: i16 = i16::MAX - 1;

fn sorted_insert<T: Ord>(v: &mut Vec<T>, x: T) -> bool {
    match v.binary_search(&x) {
        Ok(_) => false,
        Err(i) => {
            v.insert(i, x);
            true
        }
    }
}

impl TxnMeta {
    /// A new transactional id with a fresh producer id at epoch 0.
    pub fn new(id: &str, producer_id: i64, timeout_ms: i32, now_ms: i64) -> TxnMeta {
        TxnMeta {
            id: id.to_owned(),
            producer_id,
            producer_epoch: 0,
            last_producer_id: -1,
            last_producer_epoch: -1,
            timeout_ms,
            state: TxnState::Empty,
            partitions: Vec::new(),
            groups: Vec::new(),
            start_ms: -1,
            update_ms: now_ms,
        }
    }

    /// When an ongoing transaction times out (None when not ongoing).
    pub fn deadline_ms(&self) -> Option<i64> {
        (self.state == TxnState::Ongoing).then(|| self.start_ms + self.timeout_ms as i64)
    }

    /// The next epoch (or a new producer id at epoch 0 once epochs run out), remembering
    /// the current pair.
    fn bump(&mut self, new_producer_id: impl FnOnce() -> i64) {
        self.last_producer_id = self.producer_id;
        self.last_producer_epoch = self.producer_epoch;
        if self.producer_epoch >= LAST_EPOCH {
            self.producer_id = new_producer_id();
            self.producer_epoch = 0;
        } else {
            self.producer_epoch += 1;
        }
    }

    fn check_producer(&self, producer_id: i64, epoch: i16) -> Result<(), TxnError> {
        if producer_id != self.producer_id {
            return Err(TxnError::InvalidProducerIdMapping);
        }
        if epoch != self.producer_epoch {
            return Err(TxnError::ProducerFenced);
        }
        Ok(())
    }

    /// InitProducerId for an id this coordinator knows. `expected`: the producer id and
    /// epoch the client holds (KIP-360, v3+; None when it has none).
    pub fn init(
        &self,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        now_ms: i64,
        new_producer_id: impl FnOnce() -> i64,
    ) -> Result<InitOutcome, TxnError> {
        if self.state.preparing() {
            return Err(TxnError::ConcurrentTransactions);
        }
        let mut next = self.clone();
        if let Some((pid, epoch)) = expected {
            let current = pid == self.producer_id && epoch == self.producer_epoch;
            let retried = pid == self.last_producer_id && epoch == self.last_producer_epoch;
            if retried && self.state != TxnState::Ongoing {
                // The answer to this very request was lost: give it again.
                return Ok(InitOutcome::Ready(next));
            }
            if !current {
                return Err(TxnError::ProducerFenced);
            }
        }
        next.bump(new_producer_id);
        next.update_ms = now_ms;
        if self.state == TxnState::Ongoing {
            next.state = TxnState::PrepareAbort;
            return Ok(InitOutcome::AbortFirst(next));
        }
        next.timeout_ms = timeout_ms;
        next.state = TxnState::Empty;
        next.partitions.clear();
        next.groups.clear();
        next.start_ms = -1;
        Ok(InitOutcome::Ready(next))
    }

    /// The state before a partition or group joins: the same transaction when one is
    /// ongoing, else a new one starting now.
    fn joining(&self, producer_id: i64, epoch: i16, now_ms: i64) -> Result<TxnMeta, TxnError> {
        self.check_producer(producer_id, epoch)?;
        match self.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                Err(TxnError::ConcurrentTransactions)
            }
            TxnState::Dead => Err(TxnError::InvalidTxnState),
            TxnState::Ongoing => Ok(self.clone()),
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                let mut next = self.clone();
                next.state = TxnState::Ongoing;
                next.partitions.clear();
                next.groups.clear();
                next.start_ms = now_ms;
                next.update_ms = now_ms;
                Ok(next)
            }
        }
    }

    /// AddPartitionsToTxn: the new state, or None when every partition is already in the
    /// ongoing transaction (nothing to persist).
    pub fn add_partitions(
        &self,
        producer_id: i64,
        epoch: i16,
        parts: &[(String, i32)],
        now_ms: i64,
    ) -> Result<Option<TxnMeta>, TxnError> {
        let mut next = self.joining(producer_id, epoch, now_ms)?;
        let mut changed = next.state != self.state;
        for p in parts {
            changed |= sorted_insert(&mut next.partitions, p.clone());
        }
        if changed {
            next.update_ms = now_ms;
        }
        Ok(changed.then_some(next))
    }

    /// AddOffsetsToTxn: as `add_partitions`, for a consumer group.
    pub fn add_group(
        &self,
        producer_id: i64,
        epoch: i16,
        group: &str,
        now_ms: i64,
    ) -> Result<Option<TxnMeta>, TxnError> {
        let mut next = self.joining(producer_id, epoch, now_ms)?;
        let changed =
            (next.state != self.state) | sorted_insert(&mut next.groups, group.to_owned());
        if changed {
            next.update_ms = now_ms;
        }
        Ok(changed.then_some(next))
    }

    /// Whether a producer's write to `part` belongs to its ongoing transaction (KIP-890
    /// verification: Produce and TxnOffsetCommit ask before they write).
    pub fn verify(
        &self,
        producer_id: i64,
        epoch: i16,
        part: &(String, i32),
    ) -> Result<(), TxnError> {
        self.check_producer(producer_id, epoch)?;
        if self.state == TxnState::Ongoing && self.partitions.binary_search(part).is_ok() {
            Ok(())
        } else {
            Err(TxnError::InvalidTxnState)
        }
    }

    /// As `verify`, for a group's transactional offsets.
    pub fn verify_group(&self, producer_id: i64, epoch: i16, group: &str) -> Result<(), TxnError> {
        self.check_producer(producer_id, epoch)?;
        if self.state == TxnState::Ongoing && self.groups.iter().any(|g| g == group) {
            Ok(())
        } else {
            Err(TxnError::InvalidTxnState)
        }
    }

    /// EndTxn. A retry of a completed EndTxn with the same outcome succeeds; the other
    /// outcome is INVALID_TXN_STATE; one still being completed is CONCURRENT_TRANSACTIONS.
    pub fn end(
        &self,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        now_ms: i64,
    ) -> Result<EndOutcome, TxnError> {
        self.check_producer(producer_id, epoch)?;
        match (self.state, commit) {
            (TxnState::Ongoing, _) => {
                let mut next = self.clone();
                next.state = if commit {
                    TxnState::PrepareCommit
                } else {
                    TxnState::PrepareAbort
                };
                next.update_ms = now_ms;
                Ok(EndOutcome::Prepare(next))
            }
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                Err(TxnError::ConcurrentTransactions)
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => {
                Ok(EndOutcome::AlreadyDone)
            }
            _ => Err(TxnError::InvalidTxnState),
        }
    }

    /// The abort of an ongoing transaction past its timeout, with an epoch bump so the
    /// producer's next request is fenced (None when not ongoing or not yet due).
    pub fn expire(&self, now_ms: i64, new_producer_id: impl FnOnce() -> i64) -> Option<TxnMeta> {
        if self.deadline_ms().is_none_or(|d| now_ms < d) {
            return None;
        }
        let mut next = self.clone();
        // The markers must carry the transaction's producer id: past the last epoch the
        // fencing epoch stays at the maximum (the next InitProducerId takes a new id).
        if self.producer_epoch < LAST_EPOCH {
            next.bump(new_producer_id);
        }
        next.state = TxnState::PrepareAbort;
        next.update_ms = now_ms;
        Some(next)
    }

    /// The state once every marker is written (and the groups' offsets settled).
    pub fn complete(&self, now_ms: i64) -> TxnMeta {
        let mut next = self.clone();
        next.state = match self.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            TxnState::PrepareAbort => TxnState::CompleteAbort,
            s => s,
        };
        next.partitions.clear();
        next.groups.clear();
        next.start_ms = -1;
        next.update_ms = now_ms;
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> TxnMeta {
        TxnMeta::new("t", 100, 60_000, 0)
    }

    fn p(n: i32) -> (String, i32) {
        ("topic".to_owned(), n)
    }

    #[test]
    fn commit_runs_through_prepare_to_complete() {
        let m = meta();
        let m = m
            .add_partitions(100, 0, &[p(1), p(0)], 10)
            .unwrap()
            .unwrap();
        assert_eq!(m.state, TxnState::Ongoing);
        assert_eq!(m.partitions, vec![p(0), p(1)]);
        assert_eq!(m.start_ms, 10);
        assert_eq!(m.add_partitions(100, 0, &[p(0)], 11), Ok(None));
        let EndOutcome::Prepare(m) = m.end(100, 0, true, 20).unwrap() else {
            panic!("not prepared")
        };
        assert_eq!(m.state, TxnState::PrepareCommit);
        assert_eq!(
            m.end(100, 0, true, 21),
            Err(TxnError::ConcurrentTransactions)
        );
        assert_eq!(m.end(100, 0, false, 21), Err(TxnError::InvalidTxnState));
        assert_eq!(
            m.add_partitions(100, 0, &[p(2)], 21),
            Err(TxnError::ConcurrentTransactions)
        );
        let m = m.complete(30);
        assert_eq!(m.state, TxnState::CompleteCommit);
        assert!(m.partitions.is_empty());
        assert_eq!(m.end(100, 0, true, 31), Ok(EndOutcome::AlreadyDone));
        assert_eq!(m.end(100, 0, false, 31), Err(TxnError::InvalidTxnState));
        // The next transaction starts afresh.
        let m = m.add_partitions(100, 0, &[p(3)], 40).unwrap().unwrap();
        assert_eq!(
            (m.state, m.partitions.clone(), m.start_ms),
            (TxnState::Ongoing, vec![p(3)], 40)
        );
    }

    #[test]
    fn a_new_instance_fences_the_old_one_and_aborts_its_transaction() {
        let m = meta().add_partitions(100, 0, &[p(0)], 1).unwrap().unwrap();
        let InitOutcome::AbortFirst(m) = m.init(60_000, None, 2, || 999).unwrap() else {
            panic!("ongoing work must be aborted first")
        };
        assert_eq!((m.state, m.producer_epoch), (TxnState::PrepareAbort, 1));
        assert_eq!(m.partitions, vec![p(0)]);
        assert_eq!(
            m.init(60_000, None, 3, || 999),
            Err(TxnError::ConcurrentTransactions)
        );
        let m = m.complete(4);
        let InitOutcome::Ready(m) = m.init(60_000, None, 5, || 999).unwrap() else {
            panic!("nothing to abort")
        };
        assert_eq!(
            (m.producer_id, m.producer_epoch, m.state),
            (100, 2, TxnState::Empty)
        );
        // The old instance (epoch 0) is fenced everywhere.
        assert_eq!(
            m.add_partitions(100, 0, &[p(0)], 6),
            Err(TxnError::ProducerFenced)
        );
        assert_eq!(m.end(100, 0, true, 6), Err(TxnError::ProducerFenced));
        assert_eq!(m.verify(100, 0, &p(0)), Err(TxnError::ProducerFenced));
        assert_eq!(
            m.add_partitions(7, 2, &[p(0)], 6),
            Err(TxnError::InvalidProducerIdMapping)
        );
    }

    #[test]
    fn kip360_bump_retry_and_exhaustion() {
        let m = meta();
        let InitOutcome::Ready(bumped) = m.init(1000, Some((100, 0)), 1, || 5).unwrap() else {
            panic!()
        };
        assert_eq!(
            (bumped.producer_id, bumped.producer_epoch, bumped.timeout_ms),
            (100, 1, 1000)
        );
        // The same request again (its answer was lost): the same answer.
        assert_eq!(
            bumped.init(1000, Some((100, 0)), 2, || 5),
            Ok(InitOutcome::Ready(bumped.clone()))
        );
        assert_eq!(
            bumped.init(1000, Some((100, 7)), 2, || 5),
            Err(TxnError::ProducerFenced)
        );
        let mut old = meta();
        old.producer_epoch = LAST_EPOCH;
        let InitOutcome::Ready(fresh) = old.init(1000, None, 1, || 5).unwrap() else {
            panic!()
        };
        assert_eq!((fresh.producer_id, fresh.producer_epoch), (5, 0));
        assert_eq!(
            (fresh.last_producer_id, fresh.last_producer_epoch),
            (100, LAST_EPOCH)
        );
    }

    #[test]
    fn verification_needs_the_partition_in_the_ongoing_transaction() {
        let m = meta();
        assert_eq!(m.verify(100, 0, &p(0)), Err(TxnError::InvalidTxnState));
        let m = m.add_partitions(100, 0, &[p(0)], 1).unwrap().unwrap();
        assert_eq!(m.verify(100, 0, &p(0)), Ok(()));
        assert_eq!(m.verify(100, 0, &p(1)), Err(TxnError::InvalidTxnState));
        let m = m.add_group(100, 0, "g", 2).unwrap().unwrap();
        assert_eq!(m.verify_group(100, 0, "g"), Ok(()));
        assert_eq!(m.verify_group(100, 0, "h"), Err(TxnError::InvalidTxnState));
        assert_eq!(m.add_group(100, 0, "g", 3), Ok(None));
    }

    #[test]
    fn a_timed_out_transaction_is_aborted_with_a_bump() {
        let m = meta()
            .add_partitions(100, 0, &[p(0)], 1_000)
            .unwrap()
            .unwrap();
        assert_eq!(m.deadline_ms(), Some(61_000));
        assert_eq!(m.expire(60_999, || 5), None);
        let m = m.expire(61_000, || 5).unwrap();
        assert_eq!((m.state, m.producer_epoch), (TxnState::PrepareAbort, 1));
        assert_eq!(m.deadline_ms(), None);
        assert_eq!(m.end(100, 0, true, 61_001), Err(TxnError::ProducerFenced));
    }

    #[test]
    fn old_versions_get_invalid_producer_epoch() {
        assert_eq!(TxnError::ProducerFenced.code(3, 4), 47);
        assert_eq!(TxnError::ProducerFenced.code(4, 4), 90);
        assert_eq!(
            TxnState::from_name("PrepareCommit"),
            Some(TxnState::PrepareCommit)
        );
    }
}
