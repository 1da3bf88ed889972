//! Startup of the queue store: moving queue directories when the shard count changed
//! (`migrate`, before any shard starts), upgrading directories written before the
//! storage engines were merged, and loading each durable queue's segments back into its
//! owner state (`recover`, on each shard, before its AMQP listener opens).
//!
//! Upgrade of the first format (until issue 14): segments were numbered 0, 1, 2… as
//! `<n>.msgs` (message records) and `<n>.acks` (marks), with the same framing and record
//! payloads as today. A directory holding `.msgs` files is upgraded in place on first
//! start: each segment is renamed after the sequence number of its first message,
//! `<n>.acks` to `<base>.marks` first and `<n>.msgs` to `<base>.log` last (the rename of
//! the `.msgs` file is the step that completes a segment, so a crash in between is
//! finished by the next start). A segment with no intact message is removed.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::rc::Rc;

use super::record::{self, FLAG_TRANSIENT, REC_ACK, REC_DELIVERED};
use super::{log_path, marks_path, Location, QueueLog, Segment, META};
use crate::amqp::message::Message;
use crate::amqp::routing::QueueRef;
use crate::amqp::{owner, queue_owner};
use crate::broker::Shard;
use crate::storage::frame;

/// Recovers this shard's durable queues from disk into their owner state; removes the
/// files of queues the catalog no longer has (or no longer places here). Has the shard's
/// storage flusher write the store's journal from now on. Returns how many queues were
/// recovered.
pub async fn recover(shard: &Rc<Shard>) -> std::io::Result<usize> {
    let store = &shard.amqp.store;
    std::fs::create_dir_all(&store.root)?;
    shard.storage.adopt(store.journal.clone());
    let state = shard.catalog.current();
    let router = shard.amqp.router(shard);
    let mut recovered = 0;
    for vdir in std::fs::read_dir(&store.root)?.filter_map(|e| e.ok()) {
        let Ok(qdirs) = std::fs::read_dir(vdir.path()) else {
            continue;
        };
        for qdir in qdirs.filter_map(|e| e.ok()) {
            let dir = qdir.path();
            let meta = std::fs::read_to_string(dir.join(META)).unwrap_or_default();
            let mut lines = meta.lines();
            let id: Option<u64> = lines.next().and_then(|l| l.parse().ok());
            let vhost = lines.next().unwrap_or_default().to_owned();
            let name = lines.next().unwrap_or_default().to_owned();
            let def = state.amqp.get(&vhost).and_then(|t| t.queues.get(&name));
            let keep = match (id, def) {
                (Some(id), Some(d)) => {
                    d.id == id
                        && d.durable
                        && d.exclusive_owner.is_none()
                        && queue_owner(id, shard.count) == shard.id
                }
                _ => false,
            };
            let qref = router.queue(&vhost, &name).cloned();
            match (keep, qref) {
                (true, Some(qref)) => {
                    let n = load_queue(shard, &qref, &dir)?;
                    log::info!("recovered queue '{name}' in vhost '{vhost}': {n} messages");
                    recovered += 1;
                }
                _ => {
                    log::info!(
                        "removing {}: its queue is no longer in the catalog",
                        dir.display()
                    );
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
    }
    Ok(recovered)
}

/// Renames a first-format queue directory's segments (see the module comment).
fn upgrade_v1(dir: &Path) -> std::io::Result<()> {
    let mut olds: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .into_string()
                .ok()?
                .strip_suffix(".msgs")?
                .parse()
                .ok()
        })
        .collect();
    if olds.is_empty() {
        return Ok(());
    }
    olds.sort_unstable();
    log::info!(
        "{}: upgrading {} queue segments to the journal format",
        dir.display(),
        olds.len()
    );
    for n in olds {
        let msgs = dir.join(format!("{n:020}.msgs"));
        let acks = dir.join(format!("{n:020}.acks"));
        let data = std::fs::read(&msgs)?;
        let first = frame::records(&data)
            .next()
            .and_then(|(_, p)| record::message_seq(p));
        match first {
            Some(base) => {
                if acks.exists() {
                    std::fs::rename(&acks, marks_path(dir, base))?;
                }
                std::fs::rename(&msgs, log_path(dir, base))?;
            }
            None => {
                let _ = std::fs::remove_file(&acks);
                std::fs::remove_file(&msgs)?;
            }
        }
    }
    Ok(())
}

/// A message read back: (seq, expires_at, message, delivered before, where).
type Restored = (u64, Option<i64>, Message, bool, Location);

/// Reads one queue's segments back: messages not acked return to the queue, redelivered
/// when they had been delivered before the restart.
fn load_queue(shard: &Rc<Shard>, qref: &QueueRef, dir: &Path) -> std::io::Result<usize> {
    upgrade_v1(dir)?;
    let journal = &shard.amqp.store.journal;
    let mut bases: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .into_string()
                .ok()?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .collect();
    bases.sort_unstable();
    let mut segments = BTreeMap::new();
    let mut restored: Vec<Restored> = Vec::new();
    for base in &bases {
        let msgs = journal.recover(log_path(dir, *base))?;
        let marks_file = marks_path(dir, *base);
        let marks = if marks_file.exists() {
            Some(journal.recover(marks_file)?)
        } else {
            None
        };
        let mut acked = HashSet::new();
        let mut delivered = HashSet::new();
        if let Some(m) = &marks {
            for (_, p) in frame::records(&m.data[..m.valid]) {
                let Some((kind, seqs)) = record::decode_marks(p) else {
                    continue;
                };
                match kind {
                    REC_ACK => acked.extend(seqs),
                    REC_DELIVERED => delivered.extend(seqs),
                    _ => {}
                }
            }
        }
        let mut live = 0;
        for (at, p) in frame::records(&msgs.data[..msgs.valid]) {
            let Some(r) = record::decode_message(p) else {
                continue;
            };
            if r.flags & FLAG_TRANSIENT != 0 || acked.contains(&r.seq) {
                continue;
            }
            let loc = Location {
                segment: *base,
                offset: at as u64,
                len: (p.len() + frame::HEADER) as u32,
            };
            live += 1;
            let was_delivered = delivered.contains(&r.seq);
            restored.push((r.seq, r.expires_at, r.msg, was_delivered, loc));
        }
        if live == 0 {
            // Everything in it was acked.
            let _ = std::fs::remove_file(log_path(dir, *base));
            let _ = std::fs::remove_file(marks_path(dir, *base));
            continue;
        }
        let marks = match marks {
            Some(m) => m.file,
            None => journal.create(marks_path(dir, *base)),
        };
        segments.insert(
            *base,
            Segment {
                msgs: msgs.file,
                marks,
                live,
                acks_pending: Vec::new(),
                delivered_pending: Vec::new(),
            },
        );
    }
    // New messages go to a fresh segment, named after the next sequence number (above
    // every live segment's base, since each holds a message below it).
    let next_seq = restored.iter().map(|r| r.0 + 1).max().unwrap_or(0);
    let active = next_seq.max(segments.keys().next_back().map_or(0, |b| b + 1));
    for stale in [log_path(dir, active), marks_path(dir, active)] {
        let _ = std::fs::remove_file(stale);
    }
    segments.insert(active, Segment::new(journal, dir, active));
    let log = Rc::new(RefCell::new(QueueLog {
        dir: dir.to_owned(),
        segments,
        active,
        marked: false,
        marked_segments: Vec::new(),
    }));
    shard.amqp.store.logs.borrow_mut().insert(qref.id, log);
    let n = restored.len();
    if let Some(q) = owner::queue_for(shard, qref) {
        let mut q = q.borrow_mut();
        restored.sort_by_key(|r| r.0);
        for (seq, exp, m, delivered, loc) in restored {
            q.restore(shard, seq, exp, m, delivered, loc);
        }
    }
    Ok(n)
}

/// Moves queue directories to their owner shard (`placement::queue_owner`: the queue's
/// id onto the shard count) when the shard count changed, or when they were placed by an
/// older rule (a hash of the name). Runs before any shard starts.
pub fn migrate(data_dir: &Path, shards: usize) -> std::io::Result<()> {
    for (from, dir) in crate::broker::shard_dirs(data_dir) {
        let root = dir.join("amqp");
        let Ok(vdirs) = std::fs::read_dir(&root) else {
            continue;
        };
        for vdir in vdirs.filter_map(|e| e.ok()) {
            let Ok(qdirs) = std::fs::read_dir(vdir.path()) else {
                continue;
            };
            for qdir in qdirs.filter_map(|e| e.ok()) {
                let meta = std::fs::read_to_string(qdir.path().join(META)).unwrap_or_default();
                let mut lines = meta.lines();
                let id = lines.next().and_then(|l| l.parse::<u64>().ok());
                let (Some(id), Some(name)) = (id, lines.nth(1)) else {
                    continue;
                };
                let to = queue_owner(id, shards);
                if to != from {
                    let dest = data_dir
                        .join(to.to_string())
                        .join("amqp")
                        .join(vdir.file_name());
                    std::fs::create_dir_all(&dest)?;
                    let target = dest.join(qdir.file_name());
                    let _ = std::fs::remove_dir_all(&target);
                    log::info!("moving queue '{name}' from shard {from} to shard {to}");
                    std::fs::rename(qdir.path(), target)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::message::{MessageData, Parts};
    use crate::storage::frame;
    use bytes::Bytes;

    fn message(seq: u64) -> Vec<u8> {
        let m = Message::new(MessageData {
            parts: Parts::apart(
                Bytes::new(),
                Bytes::from_static(b"q"),
                Bytes::from_static(&[0, 0]),
                Bytes::from(format!("m{seq}")),
            ),
            persistent: true,
            priority: 0,
            expiration: None,
        });
        frame::framed(&record::encode_message(seq, None, &m, 0))
    }

    #[test]
    fn first_format_segments_are_renamed_after_their_first_message() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Segment 2 starts at seq 5, and an old `00…05.acks` must not be overwritten by
        // segment 2's marks before segment 5 is upgraded.
        std::fs::write(
            d.join(format!("{:020}.msgs", 2)),
            [message(5), message(6)].concat(),
        )
        .unwrap();
        std::fs::write(d.join(format!("{:020}.acks", 2)), b"two").unwrap();
        std::fs::write(d.join(format!("{:020}.msgs", 5)), message(9)).unwrap();
        std::fs::write(d.join(format!("{:020}.acks", 5)), b"five").unwrap();
        // An empty active segment goes.
        std::fs::write(d.join(format!("{:020}.msgs", 6)), b"").unwrap();
        upgrade_v1(d).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                format!("{:020}.log", 5),
                format!("{:020}.marks", 5),
                format!("{:020}.log", 9),
                format!("{:020}.marks", 9),
            ]
        );
        assert_eq!(std::fs::read(marks_path(d, 5)).unwrap(), b"two");
        assert_eq!(std::fs::read(marks_path(d, 9)).unwrap(), b"five");
        // Done once: a second start changes nothing.
        upgrade_v1(d).unwrap();
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 4);
    }
}
