//! Upgrading a data directory: durable queues written by the broker before the storage
//! engines were merged (issue 14; the `amqp/<vhost>/<queue>/<n>.msgs|.acks` format) come up
//! under the current build with every persistent message that was not acked, in order,
//! with its properties; acked messages and transient ones do not come back.
//!
//! The fixture in `tests/fixtures/amqp-v1/` was written by the pre-merge binary with
//! `write_v1_fixture` below (see `tests/fixtures/README.md`).

mod common;

use std::path::Path;

use common::amqp::*;
use common::{data_dir, Broker};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/amqp-v1");

/// Bodies of "orders": `order-<i>` and padding, so the 4 KiB segments roll often.
fn order_body(i: u32) -> Vec<u8> {
    let mut b = format!("order-{i}|").into_bytes();
    b.resize(600, b'.');
    b
}

fn order_props(i: u32) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("n"), AMQPValue::LongLongInt(i as i64));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("text/plain".into())
        .with_message_id(format!("m{i}").into())
        .with_priority(3)
        .with_headers(headers)
}

/// Publishes on a channel in confirm mode; the broker must ack it.
async fn stored(ch: &Channel, queue: &str, body: &[u8], props: BasicProperties) {
    let outcome = publish_outcome(ch, "", queue, body, props).await;
    assert!(outcome.expect("publish").is_ack(), "confirmed");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read fixture") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).expect("copy");
        }
    }
}

/// Writes the fixture; run it against the pre-merge binary:
/// `BROKER_UNDER_TEST=/work/engine-old-portask FIXTURE_OUT=tests/fixtures/amqp-v1
///  cargo test --test amqp_upgrade write_v1_fixture -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes the committed fixture with an older broker binary; run by hand (see doc)"]
async fn write_v1_fixture() {
    let out = std::env::var("FIXTURE_OUT").expect("FIXTURE_OUT");
    let (_d, data) = data_dir();
    let mut broker =
        Broker::start_with_shards(&data, &[("PORTASK_AMQP__SEGMENT_BYTES", "4096")], 1);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare_durable(&ch, "orders").await;
    declare_durable(&ch, "audit log").await;
    confirm_select(&ch).await;
    for i in 0..30 {
        stored(&ch, "orders", &order_body(i), order_props(i)).await;
    }
    for i in 0..2 {
        stored(
            &ch,
            "orders",
            format!("transient-{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    for i in 0..3 {
        stored(
            &ch,
            "audit log",
            format!("audit-{i}").as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
    }
    // Take 12 of "orders": ack 0..=9 and 11, leave 10 delivered and unacked.
    let cch = channel(&conn).await;
    cch.basic_qos(12, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut c = consume(&cch, "orders", false).await;
    let mut got = Vec::new();
    for _ in 0..12 {
        got.push(next(&mut c, 10).await.expect("delivery"));
    }
    cch.basic_cancel(c.tag(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    for (i, d) in got.into_iter().enumerate() {
        if i != 10 {
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
    }
    cch.close(200, "bye".into()).await.expect("close");
    // A confirmed publish after the acks: its sync round carries them too.
    stored(
        &ch,
        "audit log",
        b"audit-3",
        BasicProperties::default().with_delivery_mode(2),
    )
    .await;
    drop(conn);
    assert!(broker.terminate().success());
    let out = Path::new(&out);
    let _ = std::fs::remove_dir_all(out);
    copy_dir(&data, out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_queue_files_are_migrated_on_first_start() {
    let (_d, data) = data_dir();
    copy_dir(Path::new(FIXTURE), &data);
    // A torn write at the end of the last segment: cut off (and logged) by recovery, after
    // the upgrade renamed the file.
    let last = data.join("0/amqp/%2F/orders/00000000000000000005.msgs");
    let mut bytes = std::fs::read(&last).expect("fixture segment");
    bytes.extend_from_slice(&[0, 0, 0, 40, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
    std::fs::write(&last, bytes).expect("tear the segment");
    // Two shards where the fixture had one: queue directories move to their owner too.
    let mut broker = Broker::start(&data, &[("PORTASK_AMQP__SEGMENT_BYTES", "4096")]);
    let url = broker.amqp_url();
    {
        let conn = connect(&url).await;
        let ch = channel(&conn).await;
        ch.basic_qos(100, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut c = consume(&ch, "orders", false).await;
        // 10 was delivered and not acked: it comes back first, redelivered; 0..=9 and 11
        // were acked; the transient messages are gone.
        let expected: Vec<u32> = std::iter::once(10).chain(12..30).collect();
        for i in &expected {
            let d = next(&mut c, 10).await.expect("a migrated message");
            assert_eq!(d.data, order_body(*i), "message {i}");
            assert_eq!(d.redelivered, *i == 10, "redelivered flag of {i}");
            let p = &d.properties;
            assert_eq!(p.delivery_mode(), &Some(2));
            assert_eq!(p.priority(), &Some(3));
            assert_eq!(
                p.content_type().as_ref().map(|s| s.as_str()),
                Some("text/plain")
            );
            assert_eq!(
                p.message_id().as_ref().map(|s| s.to_string()),
                Some(format!("m{i}"))
            );
            let n = p
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("n").cloned());
            assert_eq!(n, Some(AMQPValue::LongLongInt(*i as i64)));
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
        assert!(next(&mut c, 1).await.is_none(), "nothing else in orders");
        assert!(
            broker.log().contains("truncating torn tail"),
            "the torn tail is logged"
        );
        let audit = drain(&ch, "audit log").await;
        assert_eq!(
            audit,
            vec![
                b"audit-0".to_vec(),
                b"audit-1".to_vec(),
                b"audit-2".to_vec(),
                b"audit-3".to_vec()
            ]
        );
        // The queue keeps working in the new format.
        confirm_select(&ch).await;
        stored(
            &ch,
            "orders",
            b"after-upgrade",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
    }
    // The migrated files are the new format: after a kill, only the new message is there.
    broker.kill9();
    broker.restart();
    let conn = connect(&url).await;
    let ch = channel(&conn).await;
    let got = get_within(&ch, "orders", 10).await.expect("after restart");
    assert_eq!(got.delivery.data, b"after-upgrade");
    assert!(drain(&ch, "orders").await.is_empty());
}
