//! Settling deliveries: prefetch, ack/nack/reject with and without requeue, the
//! redelivered flag, recover, basic.get, a lost consumer's messages going to another
//! consumer, server-sent basic.cancel, publisher confirms and transactions.

mod common;

use std::time::Duration;

use common::amqp::*;
use common::{data_dir, Broker};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_nack_reject_recover_and_redelivered() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare(&ch, "q", FieldTable::default()).await;
    for i in 0..20u8 {
        publish(&ch, "", "q", &[i]).await;
    }
    let cch = channel(&conn).await;
    cch.basic_qos(5, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut c = consume(&cch, "q", false).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(next(&mut c, 5).await.expect("delivery"));
    }
    // Prefetch 5: nothing more until something is settled.
    assert!(next(&mut c, 1).await.is_none(), "prefetch not honoured");
    assert!(got.iter().all(|d| !d.redelivered));
    assert_eq!(
        got.iter().map(|d| d.data[0]).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );

    // nack with requeue: comes back, marked redelivered, ahead of newer messages.
    cch.basic_nack(
        got[0].delivery_tag,
        BasicNackOptions {
            requeue: true,
            multiple: false,
        },
    )
    .await
    .expect("nack");
    let d = next(&mut c, 5).await.expect("redelivery");
    assert_eq!(d.data, vec![0]);
    assert!(d.redelivered);
    // reject without requeue: gone (no dead-letter exchange).
    cch.basic_reject(d.delivery_tag, BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    // ack multiple up to the fifth.
    cch.basic_ack(got[4].delivery_tag, BasicAckOptions { multiple: true })
        .await
        .expect("ack");
    let mut batch = Vec::new();
    for _ in 0..5 {
        batch.push(next(&mut c, 5).await.expect("delivery"));
    }
    assert_eq!(
        batch.iter().map(|d| d.data[0]).collect::<Vec<_>>(),
        vec![5, 6, 7, 8, 9]
    );
    // nack multiple with requeue, then all five come back redelivered, in order.
    cch.basic_nack(
        batch[4].delivery_tag,
        BasicNackOptions {
            requeue: true,
            multiple: true,
        },
    )
    .await
    .expect("nack multiple");
    for i in 5..10u8 {
        let d = next(&mut c, 5).await.expect("redelivery");
        assert_eq!(d.data, vec![i]);
        assert!(d.redelivered);
        batch.push(d);
    }
    // recover: every unacked delivery of the channel goes back, redelivered. (The
    // consumer is cancelled first: lapin drops deliveries that race its recover-ok.)
    cch.basic_cancel(c.tag(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    cch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .expect("recover");
    let mut again = Vec::new();
    for _ in 0..5 {
        let m = get_within(&ch, "q", 5).await.expect("after recover");
        assert!(m.delivery.redelivered);
        again.push(m.delivery.data[0]);
    }
    assert_eq!(again, vec![5, 6, 7, 8, 9]);
    assert_eq!(drain(&ch, "q").await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_get_empty() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare(&ch, "g", FieldTable::default()).await;
    assert!(ch
        .basic_get("g".into(), BasicGetOptions::default())
        .await
        .expect("get")
        .is_none());
    for i in 0..3u8 {
        publish(&ch, "", "g", &[i]).await;
    }
    let m = ch
        .basic_get("g".into(), BasicGetOptions::default())
        .await
        .expect("get")
        .expect("message");
    assert_eq!(m.delivery.data, vec![0]);
    assert_eq!(m.message_count, 2);
    m.delivery
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .expect("nack");
    let m = ch
        .basic_get("g".into(), BasicGetOptions::default())
        .await
        .expect("get")
        .expect("message");
    assert_eq!(m.delivery.data, vec![0]);
    assert!(m.delivery.redelivered);
    m.delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    assert_eq!(drain(&ch, "g").await, vec![vec![1], vec![2]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_consumer_s_messages_go_to_another_consumer() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let url = broker.amqp_url();
    let pconn = connect(&url).await;
    let pch = channel(&pconn).await;
    declare(&pch, "jobs", FieldTable::default()).await;
    for i in 0..10u8 {
        publish(&pch, "", "jobs", &[i]).await;
    }
    let first = connect(&url).await;
    let fch = channel(&first).await;
    fch.basic_qos(4, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut fc = consume(&fch, "jobs", false).await;
    for i in 0..4u8 {
        let d = next(&mut fc, 5).await.expect("delivery");
        assert_eq!(d.data, vec![i]);
    }
    let second = connect(&url).await;
    let sch = channel(&second).await;
    let mut sc = consume(&sch, "jobs", false).await;
    // The second consumer gets the rest first...
    let mut seen = Vec::new();
    for _ in 0..6 {
        let d = next(&mut sc, 5).await.expect("delivery");
        assert!(!d.redelivered);
        seen.push(d.data[0]);
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    // ...then the first connection drops without acking: its four come back redelivered.
    drop(fc);
    first.close(200, "gone".into()).await.expect("close");
    for _ in 0..4 {
        let d = next(&mut sc, 5).await.expect("redelivery");
        assert!(d.redelivered);
        seen.push(d.data[0]);
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    seen.sort();
    assert_eq!(seen, (0..10).collect::<Vec<u8>>());
    assert!(next(&mut sc, 1).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_cancels_its_consumers() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare(&ch, "doomed", FieldTable::default()).await;
    let mut c = consume(&ch, "doomed", false).await;
    let other = connect(&broker.amqp_url()).await;
    let och = channel(&other).await;
    och.queue_delete("doomed".into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    // The consumer stream ends when the server cancels it.
    let end = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut c)).await;
    assert!(matches!(end, Ok(None)), "consumer not cancelled: {end:?}");
    assert!(ch.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_and_transactions() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare(&ch, "c", FieldTable::default()).await;
    confirm_select(&ch).await;
    let mut pending = Vec::new();
    for i in 0..500u32 {
        let p = ch
            .basic_publish(
                "".into(),
                "c".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        pending.push(p);
    }
    for p in pending {
        assert!(p.await.expect("confirm").is_ack());
    }
    assert!(ch.wait_for_confirms().await.expect("wait").is_empty());
    assert_eq!(drain(&ch, "c").await.len(), 500);

    // Transactions: nothing is visible before commit, nothing after rollback.
    let tx = channel(&conn).await;
    tx.tx_select().await.expect("tx.select");
    publish(&tx, "", "c", b"one").await;
    publish(&tx, "", "c", b"two").await;
    assert!(drain(&ch, "c").await.is_empty());
    tx.tx_commit().await.expect("commit");
    assert_eq!(
        drain(&ch, "c").await,
        vec![b"one".to_vec(), b"two".to_vec()]
    );
    publish(&tx, "", "c", b"three").await;
    tx.tx_rollback().await.expect("rollback");
    tx.tx_commit().await.expect("empty commit");
    assert!(drain(&ch, "c").await.is_empty());
    // Acks in a transaction take effect at commit.
    publish(&ch, "", "c", b"four").await;
    get_and_ack(&tx, "c").await;
    tx.tx_commit().await.expect("commit ack");
    assert!(drain(&ch, "c").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_global_qos_internal_exchanges_and_tx_rollback() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    for q in ["f1", "f2"] {
        declare(&ch, q, FieldTable::default()).await;
    }
    // Channel-wide prefetch of 4 shared by two consumers on different queues.
    let cch = channel(&conn).await;
    cch.basic_qos(4, BasicQosOptions { global: true })
        .await
        .expect("qos global");
    let mut c1 = consume(&cch, "f1", false).await;
    let mut c2 = consume(&cch, "f2", false).await;
    for i in 0..10u8 {
        publish(&ch, "", "f1", &[i]).await;
    }
    // One busy consumer may use the whole window (RabbitMQ's channel-wide qos).
    let mut held1 = Vec::new();
    while let Some(d) = next(&mut c1, 1).await {
        held1.push(d);
    }
    assert_eq!(
        held1.iter().map(|d| d.data[0]).collect::<Vec<_>>(),
        vec![0, 1, 2, 3],
        "the first consumer gets the whole channel-wide window"
    );
    for i in 0..10u8 {
        publish(&ch, "", "f2", &[i]).await;
    }
    assert!(
        next(&mut c2, 1).await.is_none(),
        "delivered past a full channel-wide window"
    );
    // Acking two makes room for two more, wherever they come from; the window holds.
    cch.basic_ack(held1[1].delivery_tag, BasicAckOptions { multiple: true })
        .await
        .expect("ack two");
    let mut seen: Vec<(u8, u8)> = held1.iter().map(|d| (1, d.data[0])).collect();
    let mut last_tag = held1.iter().map(|d| d.delivery_tag).max().unwrap_or(0);
    let more = take_both(&mut c1, &mut c2, &mut last_tag).await;
    assert_eq!(more.len(), 2, "acks free exactly their room: {more:?}");
    seen.extend(&more);
    // A bigger window lets more through at once, to existing consumers too.
    cch.basic_qos(8, BasicQosOptions { global: true })
        .await
        .expect("qos global 8");
    let after = take_both(&mut c1, &mut c2, &mut last_tag).await;
    assert_eq!(after.len(), 4, "widened window: 8 unacked in all");
    seen.extend(&after);
    while seen.len() < 20 {
        // Acked up to the last tag seen, not with tag 0: lapin drops the deliveries it
        // has buffered but not yet handed out when it sends basic.ack(0, multiple), and
        // the deliveries this ack frees can reach it first.
        cch.basic_ack(last_tag, BasicAckOptions { multiple: true })
            .await
            .expect("ack all");
        let got = take_both(&mut c1, &mut c2, &mut last_tag).await;
        assert!(!got.is_empty(), "nothing delivered after acking all");
        assert!(got.len() <= 8, "window of 8 exceeded: {}", got.len());
        seen.extend(got);
    }
    seen.sort_unstable();
    let expected: Vec<(u8, u8)> = (1..=2u8)
        .flat_map(|q| (0..10u8).map(move |i| (q, i)))
        .collect();
    assert_eq!(seen, expected, "every message delivered exactly once");
    cch.basic_ack(last_tag, BasicAckOptions { multiple: true })
        .await
        .expect("ack the rest");

    // channel.flow(false) pauses deliveries; flow(true) resumes them.
    let fch = channel(&conn).await;
    declare(&fch, "flow", FieldTable::default()).await;
    let mut fc = consume(&fch, "flow", true).await;
    assert!(!fch
        .channel_flow(ChannelFlowOptions { active: false })
        .await
        .expect("flow off"));
    publish(&ch, "", "flow", b"held").await;
    assert!(
        next(&mut fc, 1).await.is_none(),
        "delivered while flow was off"
    );
    assert!(fch
        .channel_flow(ChannelFlowOptions { active: true })
        .await
        .expect("flow on"));
    assert_eq!(next(&mut fc, 5).await.expect("after flow on").data, b"held");

    // Publishing to an internal exchange is refused with 403.
    let ich = channel(&conn).await;
    ich.exchange_declare(
        "inner".into(),
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare internal");
    confirm_select(&ich).await;
    let r = publish_outcome(&ich, "inner", "", b"x", BasicProperties::default()).await;
    assert_eq!(r.err().as_ref().and_then(reply_code), Some(403));

    // tx.rollback undoes the transaction's acks: the message is unacked again and goes
    // back to the queue when its channel closes.
    declare(&ch, "txq", FieldTable::default()).await;
    publish(&ch, "", "txq", b"keep").await;
    let tch = channel(&conn).await;
    tch.tx_select().await.expect("tx.select");
    let m = tch
        .basic_get("txq".into(), BasicGetOptions::default())
        .await
        .expect("get")
        .expect("message");
    m.delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    tch.tx_rollback().await.expect("rollback");
    tch.close(200, "done".into()).await.expect("close");
    let back = get_within(&ch, "txq", 5)
        .await
        .expect("requeued after rollback");
    assert_eq!(back.delivery.data, b"keep");
    assert!(back.delivery.redelivered);
}

/// Everything the two consumers receive until both are quiet for a second, as
/// (consumer 1 or 2, first body byte); `last_tag` is raised to the highest delivery tag.
async fn take_both(
    c1: &mut lapin::Consumer,
    c2: &mut lapin::Consumer,
    last_tag: &mut u64,
) -> Vec<(u8, u8)> {
    let mut got = Vec::new();
    loop {
        let before = got.len();
        while let Some(d) = next(c1, 1).await {
            *last_tag = (*last_tag).max(d.delivery_tag);
            got.push((1, d.data[0]));
        }
        while let Some(d) = next(c2, 1).await {
            *last_tag = (*last_tag).max(d.delivery_tag);
            got.push((2, d.data[0]));
        }
        if got.len() == before {
            return got;
        }
    }
}

/// RabbitMQ's consumer timeout: a delivery left unacknowledged past
/// `amqp.consumer_timeout_ms` closes its channel with 406 and the message goes to another
/// consumer, redelivered; a consumer that acks in time is not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_delivery_past_the_consumer_timeout_closes_its_channel() {
    use futures::StreamExt;
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[("PORTASK_AMQP__CONSUMER_TIMEOUT_MS", "1000")]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare(&ch, "slow", FieldTable::default()).await;
    declare(&ch, "quick", FieldTable::default()).await;
    let stuck = channel(&conn).await;
    let mut held = consume(&stuck, "slow", false).await;
    let good = channel(&conn).await;
    let mut prompt = consume(&good, "quick", false).await;
    publish(&ch, "", "slow", b"forgotten").await;
    let d = next(&mut held, 5).await.expect("delivery");
    assert!(!d.redelivered);
    // The prompt consumer acks each message at once for longer than the timeout.
    for i in 0..15u8 {
        publish(&ch, "", "quick", &[i]).await;
        let d = next(&mut prompt, 5).await.expect("prompt delivery");
        d.ack(BasicAckOptions::default()).await.expect("ack");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // By now the stuck channel is closed with 406 and its consumer stream ended.
    let end = tokio::time::timeout(Duration::from_secs(5), held.next()).await;
    match end {
        Ok(Some(Err(e))) => assert_eq!(reply_code(&e), Some(406), "{e}"),
        Ok(None) => {}
        other => panic!("the stuck consumer was not closed: {other:?}"),
    }
    assert!(!stuck.status().connected(), "stuck channel still open");
    assert!(good.status().connected(), "the acking channel was closed");
    let again = get_within(&ch, "slow", 5).await.expect("message requeued");
    assert_eq!(again.delivery.data, b"forgotten");
    assert!(again.delivery.redelivered);
}
