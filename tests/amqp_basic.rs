//! AMQP basics with lapin against the real broker: a work queue shared by three consumers,
//! publisher and consumer on different shards, a publisher moving to its queue's shard,
//! properties and bodies delivered unchanged, direct reply-to.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::amqp::*;
use common::{data_dir, Broker};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_queue_three_consumers_share_30000_acked_messages() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let url = broker.amqp_url();
    let publisher = connect(&url).await;
    let pch = channel(&publisher).await;
    declare(&pch, "work", FieldTable::default()).await;

    const N: usize = 30_000;
    let mut tasks = Vec::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, u32)>();
    let mut conns = Vec::new();
    for worker in 0..3 {
        let conn = connect(&url).await;
        let ch = channel(&conn).await;
        ch.basic_qos(10, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = consume(&ch, "work", false).await;
        let tx = done_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut unacked_peak = 0u32;
            while let Some(d) = next(&mut consumer, 30).await {
                let n: u32 = std::str::from_utf8(&d.data).unwrap().parse().unwrap();
                d.ack(BasicAckOptions::default()).await.expect("ack");
                unacked_peak = unacked_peak.max(1);
                if tx.send((worker, n)).is_err() {
                    break;
                }
            }
        }));
        conns.push((conn, ch));
    }
    drop(done_tx);
    for i in 0..N {
        publish(&pch, "", "work", i.to_string().as_bytes()).await;
    }
    let mut seen = HashSet::new();
    let mut per_worker = [0usize; 3];
    while seen.len() < N {
        let got = tokio::time::timeout(std::time::Duration::from_secs(30), done_rx.recv())
            .await
            .expect("deliveries stalled")
            .expect("consumers ended");
        assert!(seen.insert(got.1), "message {} delivered twice", got.1);
        per_worker[got.0] += 1;
    }
    assert_eq!(seen.len(), N);
    for (w, n) in per_worker.iter().enumerate() {
        assert!(
            *n > N / 10,
            "worker {w} got only {n} of {N}: {per_worker:?}"
        );
    }
    // Nothing left, nothing unacked.
    let q = pch
        .queue_declare(
            "work".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    assert_eq!(q.message_count(), 0);
    assert_eq!(q.consumer_count(), 3);
    for t in tasks {
        t.abort();
    }
}

/// The shard that owns queue `name` of vhost `/`, as the HTTP API reports it.
fn owner_shard(broker: &Broker, name: &str) -> u64 {
    let url = format!("{}/api/v1/queues/%2f/{name}", broker.http_url());
    let text = ureq::get(&url)
        .set("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
        .timeout(Duration::from_secs(10))
        .call()
        .expect("GET the queue")
        .into_string()
        .expect("body");
    let answer: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    answer["owner_shard"]
        .as_u64()
        .unwrap_or_else(|| panic!("no owner_shard in {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publisher_and_consumer_on_different_shards() {
    let (_d, data) = data_dir();
    // Publishers stay on their shard here (they would move to their queue's otherwise,
    // `a_publisher_moves_to_its_queues_shard_with_its_channels_order_and_confirms`).
    let broker = Broker::start(
        &data,
        &[("PORTASK_AMQP__CONNECTIONS_FOLLOW_QUEUES", "false")],
    );
    let chans = one_on_each_shard(&broker.amqp_url()).await;
    let [(_c0, ch0), (_c1, ch1)] = &chans;
    // A queue on each shard (declared client-local by a connection on it); publish from
    // one shard, consume on the other, both ways.
    let names = ["q0", "q1"];
    for (shard, (_, ch)) in chans.iter().enumerate() {
        declare(ch, names[shard], locator("client-local")).await;
        assert_eq!(owner_shard(&broker, names[shard]), shard as u64);
    }
    for (publisher, consumer_ch) in [(ch0, ch1), (ch1, ch0)] {
        for q in names {
            let mut c = consume(consumer_ch, q, false).await;
            for i in 0..100u32 {
                publish(publisher, "", q, &i.to_be_bytes()).await;
            }
            for i in 0..100u32 {
                let d = next(&mut c, 10).await.expect("delivery");
                assert_eq!(d.data, i.to_be_bytes(), "per-queue order");
                d.ack(BasicAckOptions::default()).await.expect("ack");
            }
            consumer_ch
                .basic_cancel(c.tag(), BasicCancelOptions::default())
                .await
                .expect("cancel");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_goes_to_the_least_loaded_shard_preferring_the_declaring_connections() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let chans = one_on_each_shard(&broker.amqp_url()).await;
    let (ch0, ch1) = (&chans[0].1, &chans[1].1);
    // The comments give the queues each shard owns after each declare. By default a
    // queue goes to the least loaded shard, the declaring connection's on a tie.
    declare(ch0, "a", FieldTable::default()).await; // [1, 0]
    assert_eq!(owner_shard(&broker, "a"), 0);
    declare(ch0, "b", FieldTable::default()).await; // [1, 1]
    assert_eq!(owner_shard(&broker, "b"), 1);
    // client-local: the declaring connection's shard, however loaded.
    declare(ch0, "c", locator("client-local")).await; // [2, 1]
    assert_eq!(owner_shard(&broker, "c"), 0);
    // An exclusive queue stays with its connection (server-named here).
    let q = ch0
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("server-named exclusive queue"); // [3, 1]
    assert_eq!(owner_shard(&broker, q.name().as_str()), 0);
    declare(ch1, "d", FieldTable::default()).await; // [3, 2]
    declare(ch1, "e", locator("balanced")).await; // [3, 3]
    declare(ch1, "f", FieldTable::default()).await; // [3, 4]: a tie goes local
    declare(ch0, "g", FieldTable::default()).await; // [4, 4]
    for (name, owner) in [("d", 1), ("e", 1), ("f", 1), ("g", 0)] {
        assert_eq!(owner_shard(&broker, name), owner, "{name}");
    }
    // Each works from a connection on either shard: publish on one, consume on the other.
    for (name, publisher, consumer_ch) in [("a", ch1, ch0), ("b", ch0, ch1), ("c", ch1, ch1)] {
        let mut c = consume(consumer_ch, name, false).await;
        publish(publisher, "", name, b"here").await;
        let d = next(&mut c, 10).await.expect("delivery");
        assert_eq!(d.data, b"here");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    // A locator RabbitMQ does not know is refused with 406, and the channel closes.
    let err = ch0
        .queue_declare(
            "bad-locator".into(),
            QueueDeclareOptions::default(),
            locator("nearest"),
        )
        .await
        .expect_err("an unknown locator is refused");
    assert!(
        format!("{err:?}").contains("PRECONDITION_FAILED"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn properties_headers_and_big_bodies_arrive_unchanged() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[("PORTASK_AMQP__MAX_MESSAGE_BYTES", "3000000")]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare(&ch, "props", FieldTable::default()).await;
    let mut headers = FieldTable::default();
    headers.insert("str".into(), AMQPValue::LongString("v".into()));
    headers.insert("int".into(), AMQPValue::LongLongInt(-7));
    headers.insert("bool".into(), AMQPValue::Boolean(true));
    let mut nested = FieldTable::default();
    nested.insert("x".into(), AMQPValue::Double(1.5));
    headers.insert("table".into(), AMQPValue::FieldTable(nested));
    let props = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("identity"))
        .with_headers(headers)
        .with_delivery_mode(1)
        .with_priority(3)
        .with_correlation_id(ShortString::from("corr"))
        .with_reply_to(ShortString::from("replies"))
        .with_expiration(ShortString::from("60000"))
        .with_message_id(ShortString::from("mid"))
        .with_timestamp(1_700_000_000)
        .with_type(ShortString::from("kind"))
        .with_user_id(ShortString::from("guest"))
        .with_app_id(ShortString::from("app"))
        .with_cluster_id(ShortString::from("cluster"));
    let big: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
    for body in [&b""[..], &b"small"[..], &big[..]] {
        ch.basic_publish(
            "".into(),
            "props".into(),
            BasicPublishOptions::default(),
            body,
            props.clone(),
        )
        .await
        .expect("publish");
    }
    let mut c = consume(&ch, "props", true).await;
    for body in [&b""[..], &b"small"[..], &big[..]] {
        let d = next(&mut c, 10).await.expect("delivery");
        assert_eq!(d.properties, props);
        assert_eq!(d.data.len(), body.len());
        assert!(d.data == body);
    }
    // Over the configured maximum: 406 closes the channel.
    confirm_select(&ch).await;
    let too_big = vec![0u8; 3_000_001];
    let r = publish_outcome(&ch, "", "props", &too_big, BasicProperties::default()).await;
    assert_eq!(r.err().as_ref().and_then(reply_code), Some(406));
}

/// RabbitMQ's direct reply-to: a requester consumes (no-ack) from the pseudo queue
/// `amq.rabbitmq.reply-to`, its requests' `reply-to` is rewritten to a token, and a reply
/// published to that token reaches it without a queue — from either shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reply_to_rpc_across_shards() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let [(_c0, ch0), (_c1, ch1)] = one_on_each_shard(&broker.amqp_url()).await;
    declare(&ch0, "rpc", FieldTable::default()).await;
    let mut server = consume(&ch0, "rpc", false).await;
    for (requester, responder) in [(&ch1, &ch0), (&ch0, &ch0)] {
        let mut replies = consume(requester, "amq.rabbitmq.reply-to", true).await;
        for i in 0..20u32 {
            requester
                .basic_publish(
                    "".into(),
                    "rpc".into(),
                    BasicPublishOptions::default(),
                    &i.to_be_bytes(),
                    BasicProperties::default()
                        .with_reply_to("amq.rabbitmq.reply-to".into())
                        .with_correlation_id(format!("c{i}").into()),
                )
                .await
                .expect("request");
            let req = next(&mut server, 10).await.expect("request delivered");
            let reply_to = req
                .properties
                .reply_to()
                .clone()
                .expect("reply-to kept")
                .to_string();
            assert!(
                reply_to.starts_with("amq.rabbitmq.reply-to.") && reply_to.len() > 22,
                "reply-to rewritten to a token: {reply_to}"
            );
            responder
                .basic_publish(
                    "".into(),
                    reply_to.as_str().into(),
                    BasicPublishOptions::default(),
                    &(i * 2).to_be_bytes(),
                    BasicProperties::default()
                        .with_correlation_id(req.properties.correlation_id().clone().unwrap()),
                )
                .await
                .expect("reply");
            req.ack(BasicAckOptions::default()).await.expect("ack");
            let rep = next(&mut replies, 10).await.expect("reply delivered");
            assert_eq!(rep.data, (i * 2).to_be_bytes());
            assert_eq!(
                rep.properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.to_string()),
                Some(format!("c{i}"))
            );
            assert_eq!(rep.routing_key.as_str(), reply_to);
            assert!(!rep.redelivered);
        }
        requester
            .basic_cancel(replies.tag(), BasicCancelOptions::default())
            .await
            .expect("cancel reply consumer");
    }
    // Passive declare of the pseudo queue answers, as RabbitMQ does.
    let ok = ch1
        .queue_declare(
            "amq.rabbitmq.reply-to".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare of the pseudo queue");
    assert_eq!(ok.message_count(), 0);

    // A reply consumer must be no-ack: 406 closes the channel.
    let conn = connect(&broker.amqp_url()).await;
    let bad = channel(&conn).await;
    let r = bad
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(r.err().as_ref().and_then(reply_code), Some(406));
    // Asking for a reply without a reply consumer on the channel is 406 too.
    let bad = channel(&conn).await;
    confirm_select(&bad).await;
    let r = publish_outcome(
        &bad,
        "",
        "rpc",
        b"x",
        BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
    )
    .await;
    assert_eq!(r.err().as_ref().and_then(reply_code), Some(406));
    // A reply to a requester that has gone is dropped; the broker keeps serving.
    let gone = consume(&ch0, "amq.rabbitmq.reply-to", true).await;
    ch0.basic_cancel(gone.tag(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    publish(
        &ch1,
        "",
        "amq.rabbitmq.reply-to.0.1.1.0000000000000001",
        b"late",
    )
    .await;
    publish(&ch1, "", "rpc", b"still here").await;
    assert_eq!(
        next(&mut server, 10).await.expect("served").data,
        b"still here"
    );
}

/// A connection that publishes to a queue of the other shard moves to that shard between
/// two frames (`amqp::connection::moving`), and its client sees nothing of it. The
/// publisher pipelines 400 messages on two channels, one in confirm mode and one not, while
/// it moves: every confirm is an ack, the queue holds each channel's messages in the order
/// they were published, none lost or doubled, and the channels go on after the move (a
/// confirm, a consume) on the queue's shard, counted in `portask_connections_moved_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publisher_moves_to_its_queues_shard_with_its_channels_order_and_confirms() {
    const N: u32 = 400;
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let [(_c0, ch0), (c1, plain)] = one_on_each_shard(&broker.amqp_url()).await;
    declare(&ch0, "moving", locator("client-local")).await;
    assert_eq!(owner_shard(&broker, "moving"), 0);
    let confirming = channel(&c1).await;
    confirm_select(&confirming).await;
    let mut confirms = Vec::new();
    for i in 0..N {
        if i % 8 == 0 {
            // A connection moves after a run of publishes lasting
            // `runtime::placement::FOLLOW_FOR`: they are spread over more than that.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let (ch, which) = if i % 2 == 0 {
            (&confirming, b'c')
        } else {
            (&plain, b'p')
        };
        let mut body = vec![which];
        body.extend_from_slice(&i.to_be_bytes());
        let confirm = ch
            .basic_publish(
                "".into(),
                "moving".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .expect("basic.publish");
        if which == b'c' {
            confirms.push(confirm);
        }
    }
    for (i, confirm) in confirms.into_iter().enumerate() {
        let outcome = confirm.await.expect("confirm");
        assert!(
            outcome.is_ack(),
            "publish {i} on the confirming channel acked"
        );
    }
    let mut c = consume(&ch0, "moving", false).await;
    let mut last = [None::<u32>, None];
    for _ in 0..N {
        let d = next(&mut c, 10).await.expect("every message delivered");
        let n = u32::from_be_bytes(d.data[1..5].try_into().unwrap());
        let slot = usize::from(d.data[0] == b'p');
        assert!(
            last[slot].is_none_or(|prev| n == prev + 2),
            "channel {} gave {n} after {:?}: published order kept",
            d.data[0] as char,
            last[slot]
        );
        last[slot] = Some(n);
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert_eq!(
        last,
        [Some(N - 2), Some(N - 1)],
        "the last of each channel came"
    );
    assert!(next(&mut c, 1).await.is_none(), "nothing doubled");
    // The publisher's channels go on, on the queue's shard.
    let outcome = publish_outcome(&confirming, "", "moving", b"after", Default::default())
        .await
        .expect("publish after the move");
    assert!(outcome.is_ack());
    assert_eq!(next(&mut c, 10).await.expect("delivered").data, b"after");
    assert_eq!(
        connection_shard(&plain, "probe-after").await,
        0,
        "the publisher's connection is on the queue's shard"
    );
    let moved = broker.metric_total("portask_connections_moved_total", &[("protocol", "amqp")]);
    assert_eq!(moved, 1.0, "the publisher moved once");
}

/// A connection with no consumer yet moves, before its first `basic.consume`, to the shard
/// of the queue it names (`amqp::connection::moving::consume_elsewhere`): the consume is
/// answered there, and the client sees nothing of it. Messages published before and after
/// the move arrive once each and in order, its acks settle them (nothing comes back when it
/// closes), a prefetch set before the move holds after it, and its other channel goes on
/// on the queue's shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_moves_to_its_queues_shard_before_its_first_consume() {
    const N: u32 = 100;
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let [(_c0, ch0), (c1, ch1)] = one_on_each_shard(&broker.amqp_url()).await;
    declare(&ch0, "far", locator("client-local")).await;
    assert_eq!(owner_shard(&broker, "far"), 0);
    for i in 0..N / 2 {
        publish(&ch0, "", "far", &i.to_be_bytes()).await;
    }
    let other = channel(&c1).await;
    ch1.basic_qos(10, BasicQosOptions::default())
        .await
        .expect("basic.qos");
    let mut c = consume(&ch1, "far", false).await;
    assert_eq!(
        shard_of(&c),
        0,
        "the consume was answered on the queue's shard"
    );
    for i in N / 2..N {
        publish(&ch0, "", "far", &i.to_be_bytes()).await;
    }
    let mut held = Vec::new();
    for i in 0..N {
        let d = next(&mut c, 10).await.expect("every message delivered");
        assert_eq!(d.data, i.to_be_bytes(), "in order");
        held.push(d);
        if held.len() == 10 {
            // The prefetch of 10 holds: nothing more until these are acked. (Checked on the
            // first window: a second's wait on each of the ten took 10 s.)
            assert!(i >= 10 || next(&mut c, 1).await.is_none(), "prefetch kept");
            for d in held.drain(..) {
                d.ack(BasicAckOptions::default()).await.expect("ack");
            }
        }
    }
    assert!(next(&mut c, 1).await.is_none(), "nothing doubled");
    assert_eq!(
        connection_shard(&other, "probe-after").await,
        0,
        "the connection is on the queue's shard"
    );
    let moved = broker.metric_total("portask_connections_moved_total", &[("protocol", "amqp")]);
    assert_eq!(moved, 1.0, "the consumer's connection moved once");
    c1.close(200, "done".into()).await.expect("close");
    assert!(
        get_within(&ch0, "far", 1).await.is_none(),
        "every ack settled its message"
    );
}

/// A connection with a consumer stays on its shard however its publishes go (its queue
/// delivers to it there), and its consumer and publishes keep working: a second of
/// publishes to a queue of the other shard moves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_with_a_consumer_stays_where_it_is() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let [(_c0, ch0), (c1, ch1)] = one_on_each_shard(&broker.amqp_url()).await;
    declare(&ch0, "elsewhere", locator("client-local")).await;
    declare(&ch1, "at-home", locator("client-local")).await;
    let mut home = consume(&ch1, "at-home", false).await;
    let publisher = channel(&c1).await;
    for i in 0..200u32 {
        if i % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        publish(&publisher, "", "elsewhere", &i.to_be_bytes()).await;
    }
    publish(&publisher, "", "at-home", b"still here").await;
    let d = next(&mut home, 10)
        .await
        .expect("the consumer still gets its messages");
    assert_eq!(d.data, b"still here");
    d.ack(BasicAckOptions::default()).await.expect("ack");
    let elsewhere = drain(&ch0, "elsewhere").await;
    assert_eq!(elsewhere.len(), 200, "every publish arrived");
    let moved = broker.metric_total("portask_connections_moved_total", &[("protocol", "amqp")]);
    assert_eq!(moved, 0.0, "a connection with a consumer does not move");
}
