//! Full disks, with real clients against the real binary on a small loop-mounted ext4
//! filesystem (`common::disk::SmallDisk`; skipped with a printed reason where the machine
//! cannot mount one): a write the disk refuses is answered with the protocol's error within
//! the request's timeout and never appears later; the free-space watermark blocks
//! publishers before the disk is full; the broker starts, deletes and redeclares on a full
//! disk; writes resume by themselves once space is freed. The tests run one at a time (they
//! share the machine's loop devices and measure latencies).

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::disk::SmallDisk;
use common::kafka::{self, admin};
use common::Broker;
use futures::executor::block_on;
use rdkafka::admin::AdminOptions;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The watermark off: only the disk itself refuses.
const NO_WATERMARK: (&str, &str) = ("PORTASK_STORAGE__MIN_FREE_BYTES", "0");

/// acks=all, no retries (a refused write is reported, not retried until the timeout).
fn producer(b: &Broker, timeout_ms: u64) -> FutureProducer {
    let timeout = timeout_ms.to_string();
    kafka::client(
        b,
        &[
            ("acks", "all"),
            ("retries", "0"),
            ("linger.ms", "0"),
            ("message.timeout.ms", &timeout),
            ("request.timeout.ms", &timeout),
        ],
    )
}

/// Sends one record and waits for its answer: the offset, or the error and how long it took.
fn send(
    p: &FutureProducer,
    topic: &str,
    value: &[u8],
) -> (Result<i64, RDKafkaErrorCode>, Duration) {
    let started = Instant::now();
    let r = block_on(p.send(
        FutureRecord::<(), [u8]>::to(topic).payload(value),
        Duration::from_secs(30),
    ));
    let took = started.elapsed();
    let r = match r {
        Ok(d) => Ok(d.offset),
        Err((KafkaError::MessageProduction(code), _)) => Err(code),
        Err((e, _)) => panic!("unexpected produce error {e}"),
    };
    (r, took)
}

/// Every record of partition 0 of `topic`: (offset, value).
fn read_all(b: &Broker, topic: &str) -> Vec<(i64, Vec<u8>)> {
    let group = format!("reader-{}", rand_suffix());
    let c = kafka::assigned_to_end(b, &[("group.id", &group)], topic, 1);
    let mut out = Vec::new();
    let mut keep =
        |m: &BorrowedMessage<'_>| out.push((m.offset(), m.payload().unwrap_or_default().to_vec()));
    // To the partition's end: anything past `n` would be records that should not exist.
    kafka::read_to_end(&c, 1, Duration::from_secs(20), &mut keep);
    out
}

/// Runs AMQP client code (lapin needs a tokio runtime).
fn amqp<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn value(tag: &str, i: usize, len: usize) -> Vec<u8> {
    let mut v = format!("{tag}-{i}-").into_bytes();
    v.resize(len, b'x');
    v
}

/// acks=all on a full disk gets KAFKA_STORAGE_ERROR at once (not a timeout); the refused
/// records take no offsets and never appear, not after space returns, not after kill -9;
/// writes resume by themselves when the filler is removed.
#[test]
fn kafka_produce_on_a_full_disk_is_answered_and_never_written_later() {
    let _one = serial();
    let Some(disk) = SmallDisk::new(64) else {
        return;
    };
    let mut b = Broker::start(&disk.data_dir(), &[NO_WATERMARK]);
    kafka::create_topic(&b, "full", 1, &[]);
    let p = producer(&b, 5000);
    for i in 0..5 {
        let (r, _) = send(&p, "full", &value("good", i, 1000));
        assert_eq!(r, Ok(i as i64));
    }

    disk.fill();
    let mut latencies = Vec::new();
    for i in 0..10 {
        // 64 KiB: more than any block the segment already has.
        let (r, took) = send(&p, "full", &value("refused", i, 64 << 10));
        assert_eq!(
            r,
            Err(RDKafkaErrorCode::KafkaStorageError),
            "record {i} on a full disk"
        );
        assert!(took < Duration::from_secs(5), "answered after {took:?}");
        latencies.push(took);
    }
    // REST with acks all: 507 Insufficient Storage.
    assert_eq!(rest_produce_sized(&b, "full", "all", 64 << 10), 507);
    latencies.sort();
    eprintln!(
        "MEASURED time to KAFKA_STORAGE_ERROR on a full disk (acks=all, 64 KiB): median {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );

    disk.free_filler();
    for i in 5..10 {
        let (r, _) = send(&p, "full", &value("good", i, 1000));
        assert_eq!(r, Ok(i as i64), "writes resume after space returns");
    }
    let check = |b: &Broker| {
        let got = read_all(b, "full");
        let offsets: Vec<i64> = got.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (0..10).collect::<Vec<i64>>());
        for (o, v) in &got {
            assert!(
                v.starts_with(format!("good-{o}-").as_bytes()),
                "offset {o} holds {:?}",
                String::from_utf8_lossy(&v[..20.min(v.len())])
            );
        }
    };
    check(&b);
    b.kill9();
    b.restart();
    check(&b);
}

/// kill -9 with the disk full, then a restart on the same full disk: the broker starts
/// (recovery writes nothing), serves what was acknowledged, refuses new writes with
/// KAFKA_STORAGE_ERROR, and takes them again once space is freed.
#[test]
fn a_broker_killed_on_a_full_disk_starts_on_it() {
    let _one = serial();
    let Some(disk) = SmallDisk::new(64) else {
        return;
    };
    let mut b = Broker::start(&disk.data_dir(), &[NO_WATERMARK]);
    kafka::create_topic(&b, "kept", 1, &[]);
    let p = producer(&b, 5000);
    // 40 MB in the active segment: all of it is scanned after kill -9.
    for i in 0..200 {
        let (r, _) = send(&p, "kept", &value("good", i, 200_000));
        assert_eq!(r, Ok(i as i64));
    }
    // A durable queue with persistent messages is recovered too.
    amqp(async {
        let conn = common::amqp::connect(&b.amqp_url()).await;
        let ch = common::amqp::channel(&conn).await;
        durable_queue(&ch, "kept-q").await;
        ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        for i in 0..10 {
            let c = publish_persistent(&ch, "kept-q", format!("q{i}").as_bytes()).await;
            assert!(c.is_ack(), "confirm {i}");
        }
    });
    drop(p);
    disk.fill();
    b.kill9();
    let started = Instant::now();
    b.restart();
    eprintln!(
        "MEASURED restart after kill -9 on a full disk (40 MB in one partition's active segment, 10 queued messages): ready in {:?}",
        started.elapsed()
    );
    let got = read_all(&b, "kept");
    assert_eq!(got.len(), 200);
    let depth = amqp(async {
        let conn = common::amqp::connect(&b.amqp_url()).await;
        let ch = common::amqp::channel(&conn).await;
        durable_queue(&ch, "kept-q").await
    });
    assert_eq!(depth, 10, "recovered queue depth");
    let p = producer(&b, 5000);
    let (r, _) = send(&p, "kept", &value("refused", 0, 64 << 10));
    assert_eq!(r, Err(RDKafkaErrorCode::KafkaStorageError));
    disk.free_filler();
    let (r, _) = send(&p, "kept", &value("good", 200, 1000));
    assert_eq!(r, Ok(200));
}

/// Declares the durable queue `name` (or re-declares it) and returns its depth.
async fn durable_queue(ch: &lapin::Channel, name: &str) -> u32 {
    ch.queue_declare(
        name.into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await
    .expect("queue.declare")
    .message_count()
}

/// Publishes a persistent message to `queue` and waits for its confirm.
async fn publish_persistent(ch: &lapin::Channel, queue: &str, body: &[u8]) -> lapin::Confirmation {
    ch.basic_publish(
        "".into(),
        queue.into(),
        lapin::options::BasicPublishOptions::default(),
        body,
        lapin::BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .expect("basic.publish")
    .await
    .expect("confirm")
}

/// On a full disk: deleting a topic works (the catalog's reserve takes the record) and
/// gives its space back; re-declaring an existing durable queue, exchange and binding
/// writes nothing and succeeds; deleting a durable queue works.
#[test]
fn delete_and_redeclare_work_on_a_full_disk() {
    let _one = serial();
    let Some(disk) = SmallDisk::new(64) else {
        return;
    };
    let b = Broker::start(&disk.data_dir(), &[NO_WATERMARK]);
    kafka::create_topic(&b, "big", 1, &[]);
    kafka::create_topic(&b, "other", 1, &[]);
    let p = producer(&b, 5000);
    for i in 0..40 {
        let (r, _) = send(&p, "big", &value("big", i, 200_000));
        assert_eq!(r, Ok(i as i64));
    }
    amqp(async {
        let conn = common::amqp::connect(&b.amqp_url()).await;
        let ch = common::amqp::channel(&conn).await;
        declare_topology(&ch).await;
    });
    disk.fill();
    assert!(disk.free() < 64 << 10, "filled: {} free", disk.free());

    // Re-declaring on a full disk: every declare answered, the channel stays open.
    amqp(async {
        let conn = common::amqp::connect(&b.amqp_url()).await;
        let ch = common::amqp::channel(&conn).await;
        for _ in 0..3 {
            declare_topology(&ch).await;
        }
        assert!(ch.status().connected(), "channel closed by a redeclare");
        ch.queue_delete(
            "gone-q".into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("queue.delete on a full disk");
    });

    let before = disk.free();
    let r =
        block_on(admin(&b).delete_topics(&["big"], &AdminOptions::new())).expect("delete_topics");
    assert!(r[0].is_ok(), "DeleteTopics on a full disk: {:?}", r[0]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while disk.free() < before + (4 << 20) {
        assert!(
            Instant::now() < deadline,
            "the topic's space did not come back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Space is back: writes resume without a restart.
    let (r, _) = send(&p, "other", &value("after", 0, 1000));
    assert_eq!(r, Ok(0));
}

/// A durable exchange, two durable queues and a binding.
async fn declare_topology(ch: &lapin::Channel) {
    ch.exchange_declare(
        "orders-x".into(),
        lapin::ExchangeKind::Direct,
        lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
    durable_queue(ch, "orders-q").await;
    durable_queue(ch, "gone-q").await;
    common::amqp::bind(ch, "orders-q", "orders-x", "new", Default::default()).await;
}

/// A persistent publish the disk refuses is nacked and is not enqueued: the queue holds
/// only what was confirmed, a consumer gets only that, and so does a restart; publishes
/// are confirmed again once space is back.
#[test]
fn a_nacked_publish_is_not_in_the_queue() {
    let _one = serial();
    let Some(disk) = SmallDisk::new(64) else {
        return;
    };
    let mut b = Broker::start(&disk.data_dir(), &[NO_WATERMARK]);
    let url = b.amqp_url();
    amqp(async {
        let conn = common::amqp::connect(&url).await;
        let ch = common::amqp::channel(&conn).await;
        durable_queue(&ch, "jobs").await;
        ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        for i in 0..5 {
            let c = publish_persistent(&ch, "jobs", &value("ok", i, 1000)).await;
            assert!(c.is_ack(), "confirm {i}");
        }
        disk.fill();
        let mut nacked = 0;
        for i in 0..5 {
            let c = publish_persistent(&ch, "jobs", &value("refused", i, 64 << 10)).await;
            if c.is_nack() {
                nacked += 1;
            }
        }
        assert_eq!(nacked, 5, "every publish the disk refused is nacked");
        assert_eq!(
            durable_queue(&ch, "jobs").await,
            5,
            "nacked messages are not enqueued"
        );
        disk.free_filler();
        // Space is back: confirmed again, without a restart.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let c = publish_persistent(&ch, "jobs", &value("ok", 5, 1000)).await;
            if c.is_ack() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "publishes stay nacked after space returned"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(durable_queue(&ch, "jobs").await, 6);
    });
    b.kill9();
    b.restart();
    let url = b.amqp_url();
    let bodies = amqp(async {
        let conn = common::amqp::connect(&url).await;
        let ch = common::amqp::channel(&conn).await;
        assert_eq!(durable_queue(&ch, "jobs").await, 6, "after kill -9");
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get(
                "jobs".into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")
        {
            out.push(m.delivery.data.clone());
        }
        out
    });
    assert_eq!(bodies.len(), 6);
    for (i, body) in bodies.iter().enumerate() {
        assert!(
            body.starts_with(format!("ok-{i}-").as_bytes()),
            "message {i}: {:?}",
            String::from_utf8_lossy(&body[..20.min(body.len())])
        );
    }
}

/// One sample of a gauge from `/metrics`.
fn gauge(b: &Broker, name: &str) -> Option<f64> {
    let text = ureq::get(&format!("{}/metrics", b.http_url()))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// REST produce of one small record; returns the status.
fn rest_produce(b: &Broker, topic: &str, acks: &str) -> u16 {
    rest_produce_sized(b, topic, acks, 4)
}

/// REST produce of one record of `len` bytes; returns the status.
fn rest_produce_sized(b: &Broker, topic: &str, acks: &str, len: usize) -> u16 {
    let v = "r".repeat(len);
    let r = ureq::post(&format!("{}/api/v1/topics/{topic}/records", b.http_url()))
        .set(
            "Authorization",
            "Basic Z3Vlc3Q6Z3Vlc3Q=", // guest:guest
        )
        .set("Content-Type", "application/json")
        .send_string(&serde_json::json!({"acks": acks, "records": [{"value": v}]}).to_string());
    match r {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(s, _)) => s,
        Err(e) => panic!("REST produce: {e}"),
    }
}

/// Below `storage.min_free_bytes` (while the disk still has room): the alarm shows in
/// /metrics, Kafka produce gets KAFKA_STORAGE_ERROR, REST produce 507, an AMQP publisher
/// is blocked (connection.blocked, its publish not taken) while consumers still read and
/// ack and topics can be deleted; freeing space lifts it all without a restart.
#[test]
fn the_free_space_watermark_blocks_writers_and_lets_readers_free_space() {
    let _one = serial();
    let Some(disk) = SmallDisk::new(64) else {
        return;
    };
    let b = Broker::start(
        &disk.data_dir(),
        &[("PORTASK_STORAGE__MIN_FREE_BYTES", "16777216")],
    );
    kafka::create_topic(&b, "w", 1, &[]);
    kafka::create_topic(&b, "doomed", 1, &[]);
    let p = producer(&b, 5000);
    for i in 0..3 {
        assert_eq!(send(&p, "w", &value("w", i, 1000)).0, Ok(i as i64));
    }
    assert_eq!(rest_produce(&b, "w", "all"), 200);
    assert_eq!(gauge(&b, "portask_disk_alarm"), Some(0.0));
    assert_eq!(gauge(&b, "portask_disk_min_free_bytes"), Some(16777216.0));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let url = b.amqp_url();
    let (pub_conn, pub_ch) = rt.block_on(async {
        let conn = common::amqp::connect(&url).await;
        let ch = common::amqp::channel(&conn).await;
        durable_queue(&ch, "wq").await;
        ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        for i in 0..3 {
            let c = publish_persistent(&ch, "wq", &value("before", i, 100)).await;
            assert!(c.is_ack());
        }
        (conn, ch)
    });

    disk.fill_leaving(8 << 20);
    wait_for(5, "the disk alarm", || {
        gauge(&b, "portask_disk_alarm") == Some(1.0)
    });
    let (r, took) = send(&p, "w", &value("refused", 0, 1000));
    assert_eq!(r, Err(RDKafkaErrorCode::KafkaStorageError));
    assert!(took < Duration::from_secs(2), "refused after {took:?}");
    assert_eq!(rest_produce(&b, "w", "all"), 507);
    assert_eq!(rest_produce(&b, "w", "0"), 507);

    // The publisher hears connection.blocked when the alarm starts, idle as it is.
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pub_conn.status().blocked() {
            assert!(Instant::now() < deadline, "no connection.blocked");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Its publish is not taken while the alarm lasts (lapin itself holds publishes while
    // blocked; the broker would hold one from a client that does not).
    let confirm = {
        let ch = pub_ch.clone();
        rt.spawn(async move {
            ch.basic_publish(
                "".into(),
                "wq".into(),
                lapin::options::BasicPublishOptions::default(),
                b"during",
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("basic.publish")
            .await
            .expect("confirm")
        })
    };
    // Not taken: the queue still holds only what came before the alarm.
    let depth = rt.block_on(async {
        let conn = common::amqp::connect(&url).await;
        let ch = common::amqp::channel(&conn).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        durable_queue(&ch, "wq").await
    });
    assert_eq!(depth, 3, "a publish during the alarm was enqueued");
    // Readers go on: Kafka fetch, AMQP consume and ack on another connection.
    assert_eq!(read_all(&b, "w").len(), 4);
    rt.block_on(async {
        let conn = common::amqp::connect(&url).await;
        let ch = common::amqp::channel(&conn).await;
        for _ in 0..3 {
            let m = ch
                .basic_get("wq".into(), lapin::options::BasicGetOptions::default())
                .await
                .expect("basic.get")
                .expect("a message");
            m.delivery
                .acker
                .ack(lapin::options::BasicAckOptions::default())
                .await
                .expect("ack");
        }
    });
    // Deleting a topic works below the watermark.
    let r = block_on(admin(&b).delete_topics(&["doomed"], &AdminOptions::new()))
        .expect("delete_topics");
    assert!(r[0].is_ok(), "{:?}", r[0]);

    disk.free_filler();
    wait_for(5, "the alarm to clear", || {
        gauge(&b, "portask_disk_alarm") == Some(0.0)
    });
    rt.block_on(async {
        let c = tokio::time::timeout(Duration::from_secs(10), confirm)
            .await
            .expect("the blocked publish is confirmed once space is back")
            .expect("publisher task");
        assert!(c.is_ack());
        let deadline = Instant::now() + Duration::from_secs(5);
        while pub_conn.status().blocked() {
            assert!(Instant::now() < deadline, "no connection.unblocked");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(send(&p, "w", &value("w", 4, 1000)).0, Ok(4));
    assert_eq!(rest_produce(&b, "w", "all"), 200);
}

/// An idempotent producer (librdkafka's defaults: retries until message.timeout.ms) that
/// writes while the disk is full and space comes back a moment later: every record lands
/// exactly once, in order, with no gap — the refused batches were undone on the broker
/// together with their producer state, so their retries append instead of being taken for
/// duplicates.
#[test]
fn an_idempotent_producer_rides_out_a_full_disk() {
    let _one = serial();
    let Some(disk) = SmallDisk::new(64) else {
        return;
    };
    let b = Broker::start(&disk.data_dir(), &[NO_WATERMARK]);
    kafka::create_topic(&b, "idem", 1, &[]);
    let p: FutureProducer = kafka::client(
        &b,
        &[
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            ("message.timeout.ms", "30000"),
        ],
    );
    for i in 0..3 {
        let r = block_on(p.send(
            FutureRecord::<(), [u8]>::to("idem").payload(&value("idem", i, 1000)),
            Duration::from_secs(30),
        ));
        assert_eq!(
            r.map(|d| d.offset).map_err(|e| e.0.to_string()),
            Ok(i as i64)
        );
    }
    disk.fill();
    let sends: Vec<_> = (3..23)
        .map(|i| {
            p.send_result(FutureRecord::<(), [u8]>::to("idem").payload(&value("idem", i, 64 << 10)))
                .map_err(|(e, _)| e)
                .expect("enqueue")
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    disk.free_filler();
    for (i, f) in sends.into_iter().enumerate() {
        let r = block_on(f).expect("delivery future");
        assert!(
            r.is_ok(),
            "record {} not delivered: {:?}",
            i + 3,
            r.err().map(|(e, _)| e)
        );
    }
    let got = read_all(&b, "idem");
    let offsets: Vec<i64> = got.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..23).collect::<Vec<i64>>());
    for (o, v) in &got {
        assert!(
            v.starts_with(format!("idem-{o}-").as_bytes()),
            "offset {o} holds {:?}",
            String::from_utf8_lossy(&v[..20.min(v.len())])
        );
    }
}
