//! Exchange routing as clients see it: direct, fanout, topic (`*`/`#` edge cases),
//! headers (x-match all/any), exchange-to-exchange bindings, alternate exchanges and
//! mandatory returns, sender-selected distribution (CC/BCC).

mod common;

use common::amqp::*;
use common::{data_dir, Broker};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};

async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind, args: FieldTable) {
    ch.exchange_declare(name.into(), kind, ExchangeDeclareOptions::default(), args)
        .await
        .expect("exchange.declare");
}

/// Publishes `key` and returns which of `queues` got it (draining them).
async fn reached(
    ch: &Channel,
    exchange: &str,
    key: &str,
    props: BasicProperties,
    queues: &[&str],
) -> Vec<String> {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        key.as_bytes(),
        props,
    )
    .await
    .expect("publish");
    // A round trip on the same channel orders the publish before the gets.
    let mut out = Vec::new();
    for q in queues {
        if let Some(m) = get_within(ch, q, 0).await {
            assert_eq!(m.delivery.data, key.as_bytes());
            out.push(q.to_string());
            assert!(drain(ch, q).await.is_empty());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_fanout_topic_and_headers() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    let qs = ["qa", "qb", "qc"];
    for q in qs {
        declare(&ch, q, FieldTable::default()).await;
    }
    let none = BasicProperties::default;

    // Default exchange: by queue name.
    assert_eq!(reached(&ch, "", "qb", none(), &qs).await, vec!["qb"]);
    assert!(reached(&ch, "", "nosuch", none(), &qs).await.is_empty());

    // Direct.
    exchange(&ch, "d", ExchangeKind::Direct, FieldTable::default()).await;
    bind(&ch, "qa", "d", "red", FieldTable::default()).await;
    bind(&ch, "qb", "d", "red", FieldTable::default()).await;
    bind(&ch, "qc", "d", "blue", FieldTable::default()).await;
    assert_eq!(
        reached(&ch, "d", "red", none(), &qs).await,
        vec!["qa", "qb"]
    );
    assert_eq!(reached(&ch, "d", "blue", none(), &qs).await, vec!["qc"]);
    assert!(reached(&ch, "d", "green", none(), &qs).await.is_empty());
    ch.queue_unbind("qb".into(), "d".into(), "red".into(), FieldTable::default())
        .await
        .expect("unbind");
    assert_eq!(reached(&ch, "d", "red", none(), &qs).await, vec!["qa"]);

    // Fanout ignores the key; amq.fanout is predeclared.
    bind(&ch, "qa", "amq.fanout", "", FieldTable::default()).await;
    bind(&ch, "qc", "amq.fanout", "whatever", FieldTable::default()).await;
    assert_eq!(
        reached(&ch, "amq.fanout", "any.key", none(), &qs).await,
        vec!["qa", "qc"]
    );

    // Topic.
    for (q, key) in [("qa", "a.*.c"), ("qb", "a.#"), ("qc", "#.z")] {
        bind(&ch, q, "amq.topic", key, FieldTable::default()).await;
    }
    assert_eq!(
        reached(&ch, "amq.topic", "a.b.c", none(), &qs).await,
        vec!["qa", "qb"]
    );
    assert_eq!(
        reached(&ch, "amq.topic", "a", none(), &qs).await,
        vec!["qb"]
    );
    assert_eq!(
        reached(&ch, "amq.topic", "a.z", none(), &qs).await,
        vec!["qb", "qc"]
    );
    assert_eq!(
        reached(&ch, "amq.topic", "z", none(), &qs).await,
        vec!["qc"]
    );
    assert!(reached(&ch, "amq.topic", "a.b.b.c", none(), &qs).await == vec!["qb"]);
    assert!(reached(&ch, "amq.topic", "b.c", none(), &qs)
        .await
        .is_empty());
    assert_eq!(
        reached(&ch, "amq.topic", "a..c", none(), &qs).await,
        vec!["qa", "qb"]
    );

    // Headers: all / any, void means presence.
    for q in qs {
        ch.queue_purge(q.into(), QueuePurgeOptions::default())
            .await
            .expect("purge");
    }
    let mut all = FieldTable::default();
    all.insert("x-match".into(), AMQPValue::LongString("all".into()));
    all.insert("format".into(), AMQPValue::LongString("pdf".into()));
    all.insert("type".into(), AMQPValue::LongString("report".into()));
    let mut any = all.clone();
    any.insert("x-match".into(), AMQPValue::LongString("any".into()));
    bind(&ch, "qa", "amq.headers", "", all).await;
    bind(&ch, "qb", "amq.match", "", any).await;
    let with = |pairs: &[(&str, &str)]| {
        let mut h = FieldTable::default();
        for (k, v) in pairs {
            h.insert((*k).into(), AMQPValue::LongString((*v).into()));
        }
        BasicProperties::default().with_headers(h)
    };
    assert_eq!(
        reached(
            &ch,
            "amq.headers",
            "h1",
            with(&[("format", "pdf"), ("type", "report")]),
            &qs
        )
        .await,
        vec!["qa"]
    );
    assert_eq!(
        reached(
            &ch,
            "amq.match",
            "h2",
            with(&[("format", "pdf"), ("type", "report")]),
            &qs
        )
        .await,
        vec!["qb"]
    );
    assert!(
        reached(&ch, "amq.headers", "h3", with(&[("format", "pdf")]), &qs)
            .await
            .is_empty()
    );
    assert_eq!(
        reached(&ch, "amq.match", "h4", with(&[("format", "pdf")]), &qs).await,
        vec!["qb"]
    );
    assert!(
        reached(&ch, "amq.match", "h5", with(&[("format", "zip")]), &qs)
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_to_exchange_alternate_and_mandatory() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    for q in ["orders", "audit", "unrouted"] {
        declare(&ch, q, FieldTable::default()).await;
    }
    let qs = ["orders", "audit", "unrouted"];
    let none = BasicProperties::default;
    // entry (topic) -> mid (direct) -> orders; entry -> audit directly.
    exchange(&ch, "entry", ExchangeKind::Topic, FieldTable::default()).await;
    exchange(&ch, "mid", ExchangeKind::Direct, FieldTable::default()).await;
    ch.exchange_bind(
        "mid".into(),
        "entry".into(),
        "order.*".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange.bind");
    bind(&ch, "orders", "mid", "order.new", FieldTable::default()).await;
    bind(&ch, "audit", "entry", "#", FieldTable::default()).await;
    assert_eq!(
        reached(&ch, "entry", "order.new", none(), &qs).await,
        vec!["orders", "audit"]
    );
    assert_eq!(
        reached(&ch, "entry", "order.old", none(), &qs).await,
        vec!["audit"]
    );
    ch.exchange_unbind(
        "mid".into(),
        "entry".into(),
        "order.*".into(),
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange.unbind");
    assert_eq!(
        reached(&ch, "entry", "order.new", none(), &qs).await,
        vec!["audit"]
    );

    // Alternate exchange catches what the main exchange cannot route.
    exchange(&ch, "ae", ExchangeKind::Fanout, FieldTable::default()).await;
    bind(&ch, "unrouted", "ae", "", FieldTable::default()).await;
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString("ae".into()),
    );
    exchange(&ch, "main", ExchangeKind::Direct, args).await;
    bind(&ch, "orders", "main", "known", FieldTable::default()).await;
    assert_eq!(
        reached(&ch, "main", "known", none(), &qs).await,
        vec!["orders"]
    );
    assert_eq!(
        reached(&ch, "main", "unknown", none(), &qs).await,
        vec!["unrouted"]
    );

    // Mandatory and unroutable: basic.return with 312 NO_ROUTE, and the confirm still acks.
    confirm_select(&ch).await;
    let confirm = ch
        .basic_publish(
            "mid".into(),
            "nobody".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack());
    let returned = confirm.take_message().expect("returned message");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.delivery.data, b"lost");
    // Not mandatory: silently dropped, still confirmed.
    let c = ch
        .basic_publish(
            "mid".into(),
            "nobody".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(c.is_ack() && c.take_message().is_none());
}

/// RabbitMQ's sender-selected distribution: the `CC` and `BCC` headers name more routing
/// keys; each queue gets one copy, and `BCC` is removed before delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc_and_bcc_headers_route_too() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    exchange(&ch, "ssd", ExchangeKind::Direct, FieldTable::default()).await;
    let queues = ["ssd-a", "ssd-b", "ssd-c", "ssd-d"];
    for q in queues {
        declare(&ch, q, FieldTable::default()).await;
        bind(
            &ch,
            q,
            "ssd",
            q.trim_start_matches("ssd-"),
            FieldTable::default(),
        )
        .await;
    }
    let list = |keys: &[&str]| {
        AMQPValue::FieldArray(
            keys.iter()
                .map(|k| AMQPValue::LongString((*k).into()))
                .collect::<Vec<_>>()
                .into(),
        )
    };
    let mut headers = FieldTable::default();
    headers.insert("CC".into(), list(&["b", "a"]));
    headers.insert("BCC".into(), list(&["c"]));
    ch.basic_publish(
        "ssd".into(),
        "a".into(),
        BasicPublishOptions::default(),
        b"hello",
        BasicProperties::default().with_headers(headers),
    )
    .await
    .expect("publish");
    for q in ["ssd-a", "ssd-b", "ssd-c"] {
        let m = get_within(&ch, q, 5)
            .await
            .unwrap_or_else(|| panic!("{q} not reached"));
        assert_eq!(m.delivery.data, b"hello");
        let h = m.delivery.properties.headers().clone().unwrap_or_default();
        assert!(h.inner().contains_key("CC"), "CC kept: {h:?}");
        assert!(!h.inner().contains_key("BCC"), "BCC removed: {h:?}");
        assert!(drain(&ch, q).await.is_empty(), "{q} got it twice");
    }
    assert!(drain(&ch, "ssd-d").await.is_empty(), "ssd-d was not named");
}
