//! Transactional offsets (KIP-98, KIP-447): TxnOffsetCommit's offsets wait here, per
//! (group, producer id), until the producer's transaction ends; the transaction
//! coordinator then commits them into the group's committed offsets (on commit) or drops
//! them (on abort) with `Shard::txn_offsets_end`.
//!
//! Part of the group coordinator of the group's shard (`groups::group_owner`), like the
//! committed offsets; `Shard::txn_offsets_commit` and `Shard::txn_offsets_end` are where
//! the work crosses to it. Pending offsets are durable before TxnOffsetCommit is answered:
//! `<data_dir>/<shard>/groups/txn-offsets.log` (`storage::record_log::RecordLog`, rkyv
//! `PendingRecord`s). Settling a transaction makes the committed offsets durable in the
//! offset store first and records the settlement after, so a crash in between settles it
//! again after restart (the transaction coordinator re-completes every transaction it
//! had not recorded complete), which commits the same offsets once more: harmless.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;

use kafka_protocol::ResponseError;
use rkyv::{Archive, Deserialize, Serialize};

use super::store::{self, Committed, OffsetRecord};
use super::{group_owner, view_of, CommitPart, Coordinator};
use crate::broker::Shard;
use crate::storage::record_log::{self, RecordLog};

#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub enum PendingRecord {
    /// Offsets of a producer's ongoing transaction (later ones of a partition win).
    Offsets {
        group: String,
        producer_id: i64,
        parts: Vec<(String, i32, Committed)>,
    },
    /// The transaction ended: its pending offsets of the group are gone (committed or
    /// dropped).
    Settle { group: String, producer_id: i64 },
}

/// group → producer id → (topic, partition) → offset
type Pending = HashMap<String, HashMap<i64, BTreeMap<(String, i32), Committed>>>;

fn apply(pending: &mut Pending, r: PendingRecord) {
    match r {
        PendingRecord::Offsets {
            group,
            producer_id,
            parts,
        } => {
            let of = pending
                .entry(group)
                .or_default()
                .entry(producer_id)
                .or_default();
            for (t, p, c) in parts {
                of.insert((t, p), c);
            }
        }
        PendingRecord::Settle { group, producer_id } => {
            if let Some(g) = pending.get_mut(&group) {
                g.remove(&producer_id);
                if g.is_empty() {
                    pending.remove(&group);
                }
            }
        }
    }
}

fn encode(r: &PendingRecord) -> Result<Vec<u8>, String> {
    rkyv::to_bytes::<rkyv::rancor::Error>(r)
        .map(|b| b.to_vec())
        .map_err(|e| e.to_string())
}

fn decode(payload: &[u8]) -> Option<PendingRecord> {
    record_log::decode(payload)
}

/// The pending transactional offsets of one shard's groups.
pub struct TxnOffsets {
    pending: RefCell<Pending>,
    log: Rc<RecordLog>,
}

impl TxnOffsets {
    pub fn open(dir: &Path) -> std::io::Result<TxnOffsets> {
        let (log, payloads) = RecordLog::open(dir, "txn-offsets.log")?;
        let mut pending = Pending::new();
        for p in payloads {
            match decode(&p) {
                Some(r) => apply(&mut pending, r),
                None => log::warn!("txn-offsets.log: skipping a record that does not decode"),
            }
        }
        Ok(TxnOffsets {
            pending: RefCell::new(pending),
            log: Rc::new(log),
        })
    }

    fn live(&self) -> Vec<Vec<u8>> {
        self.pending
            .borrow()
            .iter()
            .flat_map(|(group, by_producer)| {
                by_producer
                    .iter()
                    .map(|(producer_id, parts)| PendingRecord::Offsets {
                        group: group.clone(),
                        producer_id: *producer_id,
                        parts: parts
                            .iter()
                            .map(|((t, p), c)| (t.clone(), *p, c.clone()))
                            .collect(),
                    })
            })
            .filter_map(|r| encode(&r).ok())
            .collect()
    }

    /// The partitions of `group` with offsets waiting for a transaction.
    pub fn pending_parts(&self, group: &str) -> HashSet<(String, i32)> {
        self.pending
            .borrow()
            .get(group)
            .map(|by_producer| {
                by_producer
                    .values()
                    .flat_map(|p| p.keys().cloned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// TxnOffsetCommit as the group coordinator receives it.
pub struct TxnCommit {
    pub group: String,
    pub producer_id: i64,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    pub parts: Vec<CommitPart>,
}

impl Shard {
    /// Records a transaction's offsets on the group's coordinator shard: per partition
    /// code, in `parts` order.
    pub async fn txn_offsets_commit(self: &Rc<Self>, commit: TxnCommit) -> Vec<i16> {
        let n = commit.parts.len();
        let owner = group_owner(&commit.group, self.count);
        let reply = if owner == self.id {
            Some(self.groups.clone().txn_commit(commit).await)
        } else {
            self.core
                .invoke_on::<Shard, _, _, _>(owner, move |shard: &Rc<Shard>| {
                    let groups = shard.groups.clone();
                    async move { groups.txn_commit(commit).await }
                })
                .await
        };
        reply.unwrap_or_else(|| vec![ResponseError::CoordinatorNotAvailable.code(); n])
    }

    /// Commits (or drops) the offsets a producer's transaction left for `group`, on the
    /// group's coordinator shard.
    pub async fn txn_offsets_end(
        self: &Rc<Self>,
        group: &str,
        producer_id: i64,
        commit: bool,
    ) -> Result<(), String> {
        let owner = group_owner(group, self.count);
        let group = group.to_owned();
        if owner == self.id {
            return self
                .groups
                .clone()
                .txn_end(group, producer_id, commit)
                .await;
        }
        self.core
            .invoke_on::<Shard, _, _, _>(owner, move |shard: &Rc<Shard>| {
                let groups = shard.groups.clone();
                async move { groups.txn_end(group, producer_id, commit).await }
            })
            .await
            .unwrap_or_else(|| Err("group coordinator shard unreachable".into()))
    }
}

impl Shard {
    /// The partitions of `group` with offsets pending in an open transaction (OffsetFetch
    /// with `require_stable`), from the group's coordinator shard.
    pub async fn txn_offsets_pending(self: &Rc<Self>, group: &str) -> HashSet<(String, i32)> {
        let owner = group_owner(group, self.count);
        let group = group.to_owned();
        if owner == self.id {
            return self.groups.txn_offsets.pending_parts(&group);
        }
        self.core
            .invoke_on::<Shard, _, _, _>(owner, move |shard: &Rc<Shard>| {
                let parts = shard.groups.txn_offsets.pending_parts(&group);
                async move { parts }
            })
            .await
            .unwrap_or_default()
    }
}

impl Coordinator {
    /// Background work: the pending-offsets log writer (started by `broker::run_shard`).
    pub fn run_txn_offsets_writer(self: &Rc<Self>) -> impl std::future::Future<Output = ()> {
        let me = self.clone();
        self.txn_offsets
            .log
            .clone()
            .run_writer(move || me.txn_offsets.live())
    }

    async fn txn_commit(self: Rc<Self>, c: TxnCommit) -> Vec<i16> {
        let n = c.parts.len();
        if !self.loaded.get() {
            return vec![ResponseError::CoordinatorLoadInProgress.code(); n];
        }
        // v3+ (KIP-447) checks the member and generation as OffsetCommit does; older
        // clients send neither (generation -1, no member id) and are not checked.
        if c.generation >= 0 || !c.member_id.is_empty() {
            // A consumer-protocol group (KIP-848) checks the member epoch instead.
            let check = match self.consumer_check_commit(&c.group, &c.member_id, c.generation) {
                Some(check) => check,
                None => self.with_group(&c.group, |g| {
                    g.check_commit(&c.member_id, c.instance_id.as_deref(), c.generation)
                }),
            };
            if let Err(code) = check {
                return vec![code; n];
            }
        }
        let now_ms = crate::storage::log::now_ms();
        let mut codes = Vec::with_capacity(n);
        let mut parts = Vec::new();
        for p in c.parts {
            if p.metadata.as_ref().is_some_and(|m| m.len() > 4096) {
                codes.push(ResponseError::OffsetMetadataTooLarge.code());
                continue;
            }
            codes.push(0);
            parts.push((
                p.topic,
                p.partition,
                Committed {
                    offset: p.offset,
                    leader_epoch: p.leader_epoch,
                    metadata: p.metadata.unwrap_or_default(),
                    commit_ms: now_ms,
                },
            ));
        }
        if parts.is_empty() {
            return codes;
        }
        let record = PendingRecord::Offsets {
            group: c.group.clone(),
            producer_id: c.producer_id,
            parts,
        };
        let written = match encode(&record) {
            Ok(bytes) => self.txn_offsets.log.append(&[bytes]).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                apply(&mut self.txn_offsets.pending.borrow_mut(), record);
                codes
            }
            Err(e) => {
                log::error!("recording transactional offsets of group {}: {e}", c.group);
                let code = ResponseError::CoordinatorNotAvailable.code();
                codes
                    .into_iter()
                    .map(|x| if x == 0 { code } else { x })
                    .collect()
            }
        }
    }

    async fn txn_end(
        self: Rc<Self>,
        group: String,
        producer_id: i64,
        commit: bool,
    ) -> Result<(), String> {
        let parts = self
            .txn_offsets
            .pending
            .borrow()
            .get(&group)
            .and_then(|g| g.get(&producer_id))
            .cloned();
        let Some(parts) = parts else {
            return Ok(());
        };
        if commit {
            let records: Vec<OffsetRecord> = parts
                .into_iter()
                .map(|((topic, partition), value)| OffsetRecord::Commit {
                    group: group.clone(),
                    topic,
                    partition,
                    value,
                })
                .collect();
            self.store.append(&records).await?;
            let mut offsets = self.offsets.borrow_mut();
            for r in &records {
                store::apply(&mut offsets, r);
            }
            drop(offsets);
            self.queue_topic(records.into_iter().filter_map(view_of).collect());
        }
        let settle = PendingRecord::Settle { group, producer_id };
        self.txn_offsets.log.append(&[encode(&settle)?]).await?;
        apply(&mut self.txn_offsets.pending.borrow_mut(), settle);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(o: i64) -> Committed {
        Committed {
            offset: o,
            leader_epoch: -1,
            metadata: String::new(),
            commit_ms: 0,
        }
    }

    #[test]
    fn pending_offsets_replay_until_settled() {
        let mut pending = Pending::new();
        let offsets = |o| PendingRecord::Offsets {
            group: "g".into(),
            producer_id: 7,
            parts: vec![("t".into(), 0, c(o))],
        };
        for r in [offsets(5), offsets(9)] {
            let bytes = encode(&r).unwrap();
            apply(&mut pending, decode(&bytes).unwrap());
        }
        assert_eq!(pending["g"][&7][&("t".to_string(), 0)].offset, 9);
        apply(
            &mut pending,
            PendingRecord::Settle {
                group: "g".into(),
                producer_id: 7,
            },
        );
        assert!(pending.is_empty());
    }
}
