//! Offsets the server keeps for AMQP stream consumers: `x-consumer-group` makes acks commit
//! a Kafka group's offset (the acked prefix, seen by rdkafka's `committed_offsets`), a
//! consumer without `x-stream-offset` resumes there (also after kill -9), the group's lag
//! shows over HTTP, `/metrics` and Kafka's ListGroups; `x-single-active-consumer` streams
//! deliver to one consumer per group and hand its unacked deliveries to the next, in
//! order; the refusals (406 bad argument, 405 while Kafka members hold the group).

use std::time::{Duration, Instant};

use crate::common::amqp::*;
use crate::common::kafka::{self, create_topic};
use crate::common::{data_dir, Broker};
use crate::kit::*;
use lapin::options::*;
use lapin::types::AMQPValue;
use lapin::{Channel, Consumer};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

async fn publish_n(ch: &Channel, queue: &str, n: u32) {
    confirm_select(ch).await;
    for i in 0..n {
        publish_acked(ch, queue, format!("m{i}").as_bytes()).await;
    }
}

/// A stream consumer with prefetch 20, `x-consumer-group: group` and `offset` if given.
async fn group_consumer(
    ch: &Channel,
    queue: &str,
    group: AMQPValue,
    offset: Option<AMQPValue>,
) -> Result<Consumer, lapin::Error> {
    let mut args = vec![("x-consumer-group", group)];
    args.extend(offset.map(|o| ("x-stream-offset", o)));
    stream_consumer(ch, queue, 20, &args).await
}

/// Receives `n` deliveries (not acked); fewer if they stop coming for 5 s.
async fn receive(c: &mut Consumer, n: usize) -> Vec<lapin::message::Delivery> {
    let mut out = Vec::new();
    while out.len() < n {
        let Some(d) = next(c, 5).await else { break };
        out.push(d);
    }
    out
}

/// Group `group`'s committed offset of `topic`/0 as rdkafka reads it (None: none).
fn committed(b: &Broker, group: &str, topic: &str) -> Option<i64> {
    let c: BaseConsumer = kafka::client(b, &[("group.id", group)]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c.committed_offsets(tpl, Duration::from_secs(5)).ok()?;
    match got.find_partition(topic, 0)?.offset() {
        Offset::Offset(n) => Some(n),
        _ => None,
    }
}

/// Waits (10 s at most) until `group`'s committed offset of `topic` is `want`.
fn await_committed(b: &Broker, group: &str, topic: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = committed(b, group, topic);
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "group {group} committed {got:?} on {topic}, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_commit_the_acked_prefix_lag_shows_and_resume_survives_kill9() {
    let (_dir, data) = data_dir();
    let mut broker = Broker::start(&data, &[]);
    {
        let conn = connect(&broker.amqp_url()).await;
        let ch = channel(&conn).await;
        declare_stream(&ch, "ledger", &[]).await;
        publish_n(&ch, "ledger", 10).await;
        let ch = channel(&conn).await;
        let mut c = group_consumer(&ch, "ledger", s("billing"), Some(s("first")))
            .await
            .expect("consume");
        let ds = receive(&mut c, 10).await;
        assert_eq!(
            ds.iter().map(stream_offset).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        // 0..=3 acked, and 6 (past a gap): the committed offset is the first unacked, 4.
        for d in ds[..4].iter().chain(&ds[6..7]) {
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
        await_committed(&broker, "billing", "ledger", 4);

        // The lag (high watermark 10 minus 4) everywhere a Kafka group's shows.
        let g = http_json(&broker, "/api/v1/consumer-groups/billing");
        assert_eq!(g["lag"], 6, "{g}");
        let text = http_get(&broker, "/metrics");
        let labels = [
            ("group", "billing"),
            ("topic", "ledger"),
            ("partition", "0"),
        ];
        assert_eq!(
            metric(&text, "portask_consumer_group_lag", &labels),
            Some(6.0)
        );
        let kc: BaseConsumer = kafka::client(&broker, &[("group.id", "someone-else")]);
        let list = kc
            .fetch_group_list(Some("billing"), Duration::from_secs(5))
            .expect("ListGroups/DescribeGroups");
        let listed = list.groups().iter().find(|g| g.name() == "billing");
        assert_eq!(
            listed.map(|g| g.state()),
            Some("Empty"),
            "a group with offsets, no Kafka members"
        );
        // The connection stays open: nothing more is committed before the crash.
        broker.kill9();
    }
    broker.restart();
    assert_eq!(
        committed(&broker, "billing", "ledger"),
        Some(4),
        "kept across kill -9"
    );
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    // No x-stream-offset: it resumes at the committed offset; 6 comes again (at least once).
    let mut c = group_consumer(&ch, "ledger", s("billing"), None)
        .await
        .expect("consume");
    let ds = receive(&mut c, 6).await;
    assert_eq!(
        ds.iter().map(stream_offset).collect::<Vec<_>>(),
        (4..10).collect::<Vec<_>>()
    );
    assert!(
        next(&mut c, 1).await.is_none(),
        "nothing before 4 or past 9"
    );
    for d in &ds {
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    // A clean cancel commits what was acked.
    ch.basic_cancel(c.tag().as_str().into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    await_committed(&broker, "billing", "ledger", 10);
    let g = http_json(&broker, "/api/v1/consumer-groups/billing");
    assert_eq!(g["lag"], 0, "{g}");
    // An explicit x-stream-offset wins over the group's.
    let mut c = group_consumer(&ch, "ledger", s("billing"), Some(AMQPValue::LongLongInt(2)))
        .await
        .expect("consume");
    assert_eq!(
        receive(&mut c, 1)
            .await
            .iter()
            .map(stream_offset)
            .collect::<Vec<_>>(),
        vec![2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_hands_unacked_deliveries_to_the_next_in_order() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare_stream(
        &ch,
        "jobs",
        &[("x-single-active-consumer", AMQPValue::Boolean(true))],
    )
    .await;
    publish_n(&ch, "jobs", 6).await;
    let (conn_a, conn_b) = (
        connect(&broker.amqp_url()).await,
        connect(&broker.amqp_url()).await,
    );
    let (ch_a, ch_b) = (channel(&conn_a).await, channel(&conn_b).await);
    let mut a = group_consumer(&ch_a, "jobs", s("workers"), Some(s("first")))
        .await
        .expect("consume a");
    let mut b = group_consumer(&ch_b, "jobs", s("workers"), None)
        .await
        .expect("consume b: consume-ok, then waits");
    let got = receive(&mut a, 6).await;
    assert_eq!(
        got.iter().map(stream_offset).collect::<Vec<_>>(),
        (0..6).collect::<Vec<_>>()
    );
    assert!(next(&mut b, 1).await.is_none(), "the second consumer waits");

    // The management API shows which one is active.
    let q = http_json(&broker, "/api/v1/queues/%2f/jobs");
    let details = q["consumer_details"]
        .as_array()
        .expect("consumer_details")
        .clone();
    let status = |tag: &str| {
        details
            .iter()
            .find(|c| c["consumer_tag"] == tag)
            .map(|c| (c["active"].clone(), c["activity_status"].clone()))
    };
    assert_eq!(
        status(a.tag().as_str()),
        Some((true.into(), "single_active".into())),
        "{q}"
    );
    assert_eq!(
        status(b.tag().as_str()),
        Some((false.into(), "waiting".into())),
        "{q}"
    );

    // a acks 0 and 1, then cancels with 2..5 unacked: b gets 2..5, in order.
    for d in &got[..2] {
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    ch_a.basic_cancel(a.tag().as_str().into(), BasicCancelOptions::default())
        .await
        .expect("cancel a");
    let next_ds = receive(&mut b, 4).await;
    assert_eq!(
        next_ds.iter().map(stream_offset).collect::<Vec<_>>(),
        (2..6).collect::<Vec<_>>()
    );
    assert!(next(&mut b, 1).await.is_none());
    await_committed(&broker, "workers", "jobs", 2);
    for d in &next_ds {
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    await_committed(&broker, "workers", "jobs", 6);
    // The active consumer's connection closing hands over too: c waits behind b, b gets
    // 6 and 7, acks 6 and its connection closes: c starts at 7.
    let conn_c = connect(&broker.amqp_url()).await;
    let ch_c = channel(&conn_c).await;
    let mut c = group_consumer(&ch_c, "jobs", s("workers"), None)
        .await
        .expect("consume c");
    assert!(next(&mut c, 1).await.is_none(), "b is still active");
    publish_n(&channel(&conn).await, "jobs", 2).await;
    let b_more = receive(&mut b, 2).await;
    assert_eq!(
        b_more.iter().map(stream_offset).collect::<Vec<_>>(),
        vec![6, 7]
    );
    b_more[0]
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    conn_b.close(200, "bye".into()).await.expect("close b");
    let c_ds = receive(&mut c, 1).await;
    assert_eq!(
        c_ds.iter().map(stream_offset).collect::<Vec<_>>(),
        vec![7],
        "from b's first unacked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_group_refusals() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(
        &data,
        &[("PORTASK_KAFKA__GROUP_INITIAL_REBALANCE_DELAY_MS", "0")],
    );
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare_stream(&ch, "audit", &[]).await;
    // Not a string: 406.
    let e = group_consumer(&ch, "audit", AMQPValue::LongInt(7), None)
        .await
        .expect_err("a number is not a group");
    assert_eq!(reply_code(&e), Some(406), "{e:?}");
    let ch = channel(&conn).await;
    let e = group_consumer(&ch, "audit", s(""), None)
        .await
        .expect_err("an empty group");
    assert_eq!(reply_code(&e), Some(406), "{e:?}");

    // A group with live Kafka members: the AMQP consumer is refused (405), as Kafka
    // refuses a commit from outside the membership of a group that is not Empty.
    create_topic(&broker, "kafka-side", 1, &[]);
    let kc: BaseConsumer = kafka::client(
        &broker,
        &[("group.id", "shared"), ("auto.offset.reset", "earliest")],
    );
    kc.subscribe(&["kafka-side"]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(20);
    while kc.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the Kafka consumer joined");
        let _ = kc.poll(Duration::from_millis(100));
    }
    let ch = channel(&conn).await;
    let e = group_consumer(&ch, "kafka-side", s("shared"), None)
        .await
        .expect_err("the group has Kafka members");
    assert_eq!(reply_code(&e), Some(405), "{e:?}");
    // Once they leave, the group is Empty and the AMQP consumer may commit.
    drop(kc);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (ch, mut c) = loop {
        let ch = channel(&conn).await;
        match group_consumer(&ch, "kafka-side", s("shared"), Some(s("first"))).await {
            Ok(c) => break (ch, c),
            Err(e) => {
                assert_eq!(reply_code(&e), Some(405), "{e:?}");
                assert!(Instant::now() < deadline, "the Kafka member left");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    publish_n(&channel(&conn).await, "kafka-side", 2).await;
    let ds = receive(&mut c, 2).await;
    ds[0].ack(BasicAckOptions::default()).await.expect("ack");
    await_committed(&broker, "shared", "kafka-side", 1);
    // A Kafka member joins again: the AMQP consumer's next commit is refused, and the
    // broker cancels it (its acks can no longer keep the group's place).
    let kc: BaseConsumer = kafka::client(
        &broker,
        &[("group.id", "shared"), ("enable.auto.commit", "false")],
    );
    kc.subscribe(&["kafka-side"]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(20);
    while kc.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the Kafka consumer joined");
        let _ = kc.poll(Duration::from_millis(100));
    }
    ds[1].ack(BasicAckOptions::default()).await.expect("ack");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q = http_json(&broker, "/api/v1/queues/%2f/kafka-side");
        if q["consumers"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the AMQP consumer was cancelled: {q}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(committed(&broker, "shared", "kafka-side"), Some(1));
    drop(ch);
}
