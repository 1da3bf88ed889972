//! Stream deliveries read from the log's batches: a consumer with a small prefetch reads
//! a stream pre-filled in a few large batches (each fetch decoded once, records let go
//! as credit returns) and gets every message once, in offset order, with the right
//! bodies; a consumer cancelled part-way and started again at the next offset misses
//! nothing; an unacked consumer holds exactly its prefetch.

use futures::future::join_all;
use lapin::options::*;
use lapin::types::AMQPValue;
use lapin::{Channel, Consumer};

use crate::common::amqp::*;
use crate::common::{data_dir, Broker};
use crate::kit::*;

const N: i64 = 2000;

/// A consumer of stream `perf` with `prefetch`, from `offset`.
async fn perf_consumer(ch: &Channel, prefetch: u16, offset: AMQPValue) -> Consumer {
    stream_consumer(ch, "perf", prefetch, &[("x-stream-offset", offset)])
        .await
        .expect("consume")
}

/// Receives `n` deliveries (fewer if they stop for 5 s), acking with `multiple` every
/// `every`; returns (offset, body) of each.
async fn read(c: &mut Consumer, n: i64, every: usize) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut since_ack = 0;
    while (out.len() as i64) < n {
        let Some(d) = next(c, 5).await else { break };
        out.push((stream_offset(&d), d.data.clone()));
        since_ack += 1;
        if since_ack == every {
            d.ack(BasicAckOptions { multiple: true })
                .await
                .expect("ack");
            since_ack = 0;
        }
    }
    out
}

fn body(i: i64) -> Vec<u8> {
    format!("message {i:05}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_prefetch_reads_large_batches_once_each_in_order() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare_stream(&ch, "perf", &[]).await;
    confirm_select(&ch).await;
    // Published back to back, confirms awaited after, so the appender writes a few
    // large batches.
    let mut pending = Vec::new();
    for i in 0..N {
        let c = ch
            .basic_publish(
                "".into(),
                "perf".into(),
                BasicPublishOptions::default(),
                &body(i),
                Default::default(),
            )
            .await
            .expect("publish");
        pending.push(c);
    }
    let confirms = join_all(pending).await;
    assert!(confirms.into_iter().all(|c| c.expect("confirm").is_ack()));

    // Prefetch 7, acks every 3: many credit returns per fetched batch.
    let cha = channel(&conn).await;
    let mut a = perf_consumer(&cha, 7, s("first")).await;
    let got = read(&mut a, N, 3).await;
    let want: Vec<(i64, Vec<u8>)> = (0..N).map(|i| (i, body(i))).collect();
    assert_eq!(got.len(), want.len(), "every message once");
    assert!(got == want, "in offset order, bodies intact");

    // Cancelled part-way (deliveries in flight dropped), then started again at the next
    // offset: the rest arrives, nothing skipped.
    let chb = channel(&conn).await;
    let mut b = perf_consumer(&chb, 50, s("first")).await;
    let first = read(&mut b, 700, 10).await;
    assert_eq!(first.last().map(|x| x.0), Some(699));
    chb.basic_cancel(b.tag().as_str().into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    let chc = channel(&conn).await;
    let mut c = perf_consumer(&chc, 50, AMQPValue::LongLongInt(700)).await;
    let rest = read(&mut c, N - 700, 10).await;
    assert_eq!(
        rest.iter().map(|x| x.0).collect::<Vec<_>>(),
        (700..N).collect::<Vec<_>>()
    );

    // No acks: exactly the prefetch arrives, whatever is pending behind it.
    let chd = channel(&conn).await;
    let mut d = perf_consumer(&chd, 5, s("first")).await;
    let mut held = 0;
    while next(&mut d, 1).await.is_some() {
        held += 1;
    }
    assert_eq!(held, 5);
}
