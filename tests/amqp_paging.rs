//! Transient messages past the memory budget are paged to the queue's files instead of
//! piling up in RAM, and come back intact and in order when consumed.

mod common;

use common::amqp::*;
use common::{data_dir, Broker};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;

fn body(i: u32) -> Vec<u8> {
    let mut b = vec![(i % 251) as u8; 16 * 1024];
    b[..4].copy_from_slice(&i.to_be_bytes());
    b
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += dir_bytes(&p);
            } else if let Ok(m) = p.metadata() {
                total += m.len();
            }
        }
    }
    total
}

/// A broker whose shards keep `budget` bytes of bodies in memory, with connections
/// allowed as many bytes in flight.
fn with_budget(data: &std::path::Path, budget: &str) -> Broker {
    Broker::start(
        data,
        &[
            ("PORTASK_AMQP__MEMORY_BUDGET_BYTES", budget),
            ("PORTASK_LIMITS__CONNECTION_INFLIGHT_BYTES", budget),
        ],
    )
}

/// A broker `with_budget`, a connection and channel to it, and the queue `name` declared.
async fn budget_queue(
    budget: &str,
    name: &str,
) -> (tempfile::TempDir, Broker, lapin::Connection, lapin::Channel) {
    let (d, data) = data_dir();
    let broker = with_budget(&data, budget);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare(&ch, name, FieldTable::default()).await;
    (d, broker, conn, ch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_transient_queue_pages_to_disk() {
    let (_d, broker, conn, ch) = budget_queue("4194304", "deep").await;
    confirm_select(&ch).await;
    const N: u32 = 4000; // 64 MiB of bodies per round
                         // Two rounds: the first shows the broker's working set, the second that another
                         // 64 MiB of backlog goes to disk instead of adding to it.
    let mut rss = Vec::new();
    for round in 0..2u32 {
        let mut last = None;
        for i in round * N..(round + 1) * N {
            last = Some(
                ch.basic_publish(
                    "".into(),
                    "deep".into(),
                    BasicPublishOptions::default(),
                    &body(i),
                    BasicProperties::default(),
                )
                .await
                .expect("publish"),
            );
        }
        assert!(last.expect("published").await.expect("confirm").is_ack());
        // Transient confirms do not wait for the page-out write: wait for the files.
        let want = ((round as u64 + 1) * 56) << 20;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut on_disk = 0;
        while on_disk <= want && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            on_disk = dir_bytes(&broker.data);
        }
        assert!(
            on_disk > want,
            "round {round}: only {on_disk} bytes on disk"
        );
        rss.push(broker.rss_bytes());
    }
    let grown = rss[1].saturating_sub(rss[0]);
    assert!(
        grown < 32 << 20,
        "a second 64 MiB of backlog grew the broker by {grown} bytes ({rss:?})"
    );

    // Everything comes back, in order, unchanged.
    let cch = channel(&conn).await;
    cch.basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut c = consume(&cch, "deep", false).await;
    for i in 0..2 * N {
        let d = next(&mut c, 20)
            .await
            .unwrap_or_else(|| panic!("message {i} missing"));
        assert!(d.data == body(i), "message {i} differs");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert!(next(&mut c, 1).await.is_none());
    let q = passive_queue(&ch, "deep").await.expect("passive");
    assert_eq!(q.message_count(), 0);
}

/// A publisher that floods a queue without confirms is held to the speed of the disk:
/// the broker keeps roughly its budget of bodies in memory while the rest is written out,
/// instead of taking in the flood and paging it later (which grew it by gigabytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_without_confirms_stays_near_the_budget() {
    let (_d, broker, conn, ch) = budget_queue("8388608", "flood").await;
    let base = broker.rss_bytes();
    const N: u32 = 8000; // 8000 × 64 KiB = 500 MiB
    let body = vec![7u8; 64 * 1024];
    let mut peak = 0;
    for i in 0..N {
        ch.basic_publish(
            "".into(),
            "flood".into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default(),
        )
        .await
        .expect("publish");
        if i % 100 == 0 {
            peak = peak.max(broker.rss_bytes());
        }
    }
    // Every message is in the queue, and comes back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut count = 0;
    while count < N && std::time::Instant::now() < deadline {
        peak = peak.max(broker.rss_bytes());
        count = passive_queue(&ch, "flood")
            .await
            .expect("passive")
            .message_count();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(count, N, "messages in the queue");
    let grown = peak.saturating_sub(base);
    assert!(
        grown < 96 << 20,
        "a 500 MiB flood with an 8 MiB budget grew the broker by {} MiB",
        grown >> 20
    );
    let cch = channel(&conn).await;
    let mut c = consume(&cch, "flood", true).await;
    for i in 0..N {
        let d = next(&mut c, 20)
            .await
            .unwrap_or_else(|| panic!("message {i} missing"));
        assert!(d.data == body, "message {i} differs");
    }
}

/// A message a fanout routes to two queues of one shard is one body in memory, and the
/// shard's budget counts it once: 2.4 MiB published to both queues of a shard with a
/// 4 MiB budget stays in memory, counted as 2.4 MiB (`portask_shard_memory_bytes`, kind
/// `amqp_queues`; each queue counting it would make 4.8 MiB and page out), and every
/// message comes back from each queue; acked, nothing is counted any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_two_queues_of_a_shard_share_counts_once_against_the_budget() {
    const N: u32 = 150; // 150 × 16 KiB = 2.4 MiB
    let (_d, data) = data_dir();
    let broker = with_budget(&data, "4194304");
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    ch.exchange_declare(
        "fan".into(),
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
    // Both on this connection's shard.
    for q in ["fan-a", "fan-b"] {
        declare(&ch, q, locator("client-local")).await;
        bind(&ch, q, "fan", "", FieldTable::default()).await;
    }
    confirm_select(&ch).await;
    for i in 0..N {
        let confirm = ch
            .basic_publish(
                "fan".into(),
                "".into(),
                BasicPublishOptions::default(),
                &body(i),
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        assert!(confirm.await.expect("confirm").is_ack());
    }
    let counted = broker.metric_total("portask_shard_memory_bytes", &[("kind", "amqp_queues")]);
    let bodies = f64::from(N) * 16.0 * 1024.0;
    assert!(
        counted >= bodies && counted < bodies * 1.1,
        "{counted} bytes counted for {bodies} bytes of bodies two queues share"
    );
    for q in ["fan-a", "fan-b"] {
        let cch = channel(&conn).await;
        cch.basic_qos(50, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut c = consume(&cch, q, false).await;
        for i in 0..N {
            let d = next(&mut c, 20)
                .await
                .unwrap_or_else(|| panic!("{q}: message {i} missing"));
            assert!(d.data == body(i), "{q}: message {i} differs");
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
        assert_eq!(
            passive_queue(&ch, q)
                .await
                .expect("passive")
                .message_count(),
            0
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut left = f64::MAX;
    while left > 0.0 && std::time::Instant::now() < deadline {
        left = broker.metric_total("portask_shard_memory_bytes", &[("kind", "amqp_queues")]);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        left, 0.0,
        "bytes still counted once both queues acked everything"
    );
}
