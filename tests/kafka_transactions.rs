//! Kafka transactions with real clients: librdkafka transactional producers and
//! `read_committed`/`read_uncommitted` consumers against the real broker (two shards, so
//! transactional ids, groups and partitions live on different shards), plus
//! DescribeTransactions/ListTransactions, KIP-890 produce verification and ACL refusals
//! as raw wire requests. What a user depends on: a committed transaction is seen once and
//! whole, an aborted one never (by read_committed), a fenced producer cannot commit,
//! consume-transform-produce counts every input exactly once across a `kill -9`, an
//! answered commit survives a `kill -9` whole, an abandoned transaction is aborted after
//! its timeout.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use common::kafka::{
    assigned, assigned_to_end, client, create_topics, read_frame, read_to_end, request_frame,
};
use common::{data_dir, Broker};
use kafka_protocol::messages::{
    ApiKey, DescribeTransactionsRequest, DescribeTransactionsResponse, InitProducerIdRequest,
    InitProducerIdResponse, ListTransactionsRequest, ListTransactionsResponse, ProduceRequest,
    ProduceResponse, TransactionalId,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

const T: Duration = Duration::from_secs(30);

fn txn_producer(b: &Broker, id: &str, extra: &[(&str, &str)]) -> BaseProducer {
    let mut settings = vec![("transactional.id", id), ("linger.ms", "5")];
    settings.extend_from_slice(extra);
    let p: BaseProducer = client(b, &settings);
    p.init_transactions(T).expect("init_transactions");
    p
}

fn send(p: &BaseProducer, topic: &str, partition: i32, value: &str) {
    common::kafka::send_base(
        p,
        BaseRecord::<str, str>::to(topic)
            .partition(partition)
            .key(value)
            .payload(value),
    );
}

/// Every value in `topic` (partitions `0..partitions`) a consumer with `isolation` reads
/// from the start to the end of each partition.
fn read_all(b: &Broker, topic: &str, partitions: i32, isolation: &str) -> Vec<String> {
    let c = assigned_to_end(b, &[("isolation.level", isolation)], topic, partitions);
    let mut out = Vec::new();
    read_to_end(&c, partitions, T, |m| {
        out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
    });
    out.sort();
    out
}

fn values(prefix: &str, n: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:04}")).collect();
    v.sort();
    v
}

fn connect(b: &Broker) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", b.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    s
}

fn call<Q: Encodable, R: Decodable>(s: &mut TcpStream, api: ApiKey, version: i16, body: &Q) -> R {
    s.write_all(&request_frame(api, version, 9, "txn-test", body))
        .expect("write");
    let mut resp: Bytes = read_frame(s).expect("response");
    assert_eq!(resp.get_i32(), 9);
    if api.response_header_version(version) >= 1 {
        assert_eq!(resp.get_u8(), 0, "no header tags");
    }
    R::decode(&mut resp, version).expect("decode")
}

fn tid(s: &str) -> TransactionalId {
    TransactionalId(StrBytes::from_string(s.to_owned()))
}

/// (error, state, producer epoch, partitions) of a transactional id.
fn describe(b: &Broker, id: &str) -> (i16, String, i16, Vec<(String, i32)>) {
    let mut s = connect(b);
    let r: DescribeTransactionsResponse = call(
        &mut s,
        ApiKey::DescribeTransactions,
        0,
        &DescribeTransactionsRequest::default().with_transactional_ids(vec![tid(id)]),
    );
    let t = &r.transaction_states[0];
    let mut parts: Vec<(String, i32)> = t
        .topics
        .iter()
        .flat_map(|d| d.partitions.iter().map(|p| (d.topic.to_string(), *p)))
        .collect();
    parts.sort();
    (
        t.error_code,
        t.transaction_state.to_string(),
        t.producer_epoch,
        parts,
    )
}

/// Waits until `id` reaches `state` (markers are written after EndTxn is answered).
fn wait_state(b: &Broker, id: &str, state: &str) {
    let deadline = Instant::now() + T;
    loop {
        let (_, now, _, _) = describe(b, id);
        if now == state {
            return;
        }
        assert!(Instant::now() < deadline, "{id} stayed {now}, not {state}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn committed_transaction_is_read_once_and_aborted_one_never() {
    let (_tmp, data) = data_dir();
    let b = Broker::start(&data, &[]);
    create_topics(&b, &[("tx-commit", 3), ("tx-abort", 3)]);
    let p = txn_producer(&b, "tx-a", &[]);
    p.begin_transaction().expect("begin");
    for (i, v) in values("c", 90).iter().enumerate() {
        send(&p, "tx-commit", (i % 3) as i32, v);
    }
    p.commit_transaction(T).expect("commit");
    p.begin_transaction().expect("begin");
    for (i, v) in values("a", 30).iter().enumerate() {
        send(&p, "tx-abort", (i % 3) as i32, v);
    }
    p.flush(T).expect("flush");
    p.abort_transaction(T).expect("abort");
    wait_state(&b, "tx-a", "CompleteAbort");

    assert_eq!(
        read_all(&b, "tx-commit", 3, "read_committed"),
        values("c", 90)
    );
    assert_eq!(
        read_all(&b, "tx-abort", 3, "read_committed"),
        Vec::<String>::new()
    );
    assert_eq!(
        read_all(&b, "tx-abort", 3, "read_uncommitted"),
        values("a", 30)
    );
    // The next transaction after an abort works and is visible.
    p.begin_transaction().expect("begin");
    send(&p, "tx-abort", 0, "after-abort");
    p.commit_transaction(T).expect("commit");
    assert_eq!(
        read_all(&b, "tx-abort", 3, "read_committed"),
        vec!["after-abort"]
    );
}

#[test]
fn a_new_instance_fences_the_old_one() {
    let (_tmp, data) = data_dir();
    let b = Broker::start(&data, &[]);
    create_topics(&b, &[("tx-fence", 2)]);
    let old = txn_producer(&b, "tx-f", &[]);
    old.begin_transaction().expect("begin");
    for v in values("old", 10) {
        send(&old, "tx-fence", 0, &v);
    }
    old.flush(T).expect("flush");
    let (_, state, epoch_before, parts) = describe(&b, "tx-f");
    assert_eq!(state, "Ongoing");
    assert_eq!(parts, vec![("tx-fence".to_owned(), 0)]);

    // The new instance's init aborts the old one's open transaction (its retries wait for
    // the abort) and bumps the epoch.
    let new = txn_producer(&b, "tx-f", &[]);
    let (_, state, epoch_after, _) = describe(&b, "tx-f");
    assert_eq!(state, "Empty");
    assert!(epoch_after > epoch_before, "{epoch_after} > {epoch_before}");
    new.begin_transaction().expect("begin");
    for v in values("new", 10) {
        send(&new, "tx-fence", 1, &v);
    }
    new.commit_transaction(T).expect("commit");

    // The old instance can no longer commit: a fatal error (fenced).
    let e = old
        .commit_transaction(T)
        .expect_err("the old instance is fenced");
    match &e {
        KafkaError::Transaction(t) => assert!(t.is_fatal(), "fatal: {e}"),
        other => panic!("unexpected {other}"),
    }
    assert_eq!(
        read_all(&b, "tx-fence", 2, "read_committed"),
        values("new", 10)
    );
}

#[test]
fn an_open_transaction_is_aborted_after_its_timeout() {
    let (_tmp, data) = data_dir();
    let b = Broker::start(&data, &[]);
    create_topics(&b, &[("tx-slow", 1)]);
    let p = txn_producer(&b, "tx-t", &[("transaction.timeout.ms", "1500")]);
    p.begin_transaction().expect("begin");
    for v in values("late", 5) {
        send(&p, "tx-slow", 0, &v);
    }
    p.flush(T).expect("flush");
    let (_, _, epoch, _) = describe(&b, "tx-t");
    // Aborted by the coordinator's clock, with an epoch bump that fences the producer.
    wait_state(&b, "tx-t", "CompleteAbort");
    assert_eq!(describe(&b, "tx-t").2, epoch + 1);
    assert!(
        p.commit_transaction(T).is_err(),
        "the timed-out commit fails"
    );
    assert_eq!(
        read_all(&b, "tx-slow", 1, "read_committed"),
        Vec::<String>::new()
    );
    assert_eq!(
        read_all(&b, "tx-slow", 1, "read_uncommitted"),
        values("late", 5)
    );
}

#[test]
fn an_answered_commit_survives_kill9_whole() {
    let (_tmp, data) = data_dir();
    let mut b = Broker::start(&data, &[]);
    create_topics(&b, &[("tx-k1", 4), ("tx-k2", 4)]);
    {
        let p = txn_producer(&b, "tx-k", &[]);
        p.begin_transaction().expect("begin");
        for (i, v) in values("k", 80).iter().enumerate() {
            let topic = if i % 2 == 0 { "tx-k1" } else { "tx-k2" };
            send(&p, topic, (i % 4) as i32, v);
        }
        p.commit_transaction(T).expect("commit");
        // No time for the markers: the broker dies right after answering EndTxn.
        b.kill9();
    }
    b.restart();
    // The coordinator finds the decided transaction in its log and completes it.
    wait_state(&b, "tx-k", "CompleteCommit");
    let mut all = read_all(&b, "tx-k1", 4, "read_committed");
    all.extend(read_all(&b, "tx-k2", 4, "read_committed"));
    all.sort();
    assert_eq!(all, values("k", 80));
    // The producer id carries on: a new instance gets the next epoch.
    let p = txn_producer(&b, "tx-k", &[]);
    p.begin_transaction().expect("begin");
    send(&p, "tx-k1", 0, "after-restart");
    p.commit_transaction(T).expect("commit");
}

/// Consume-transform-produce with `send_offsets_to_transaction`: every input is counted
/// once in the output, across a `kill -9` in the middle of a transaction.
#[test]
fn consume_transform_produce_is_exactly_once_across_kill9() {
    let (_tmp, data) = data_dir();
    let mut b = Broker::start(&data, &[]);
    create_topics(&b, &[("ctp-in", 2), ("ctp-out", 2)]);
    {
        let p: BaseProducer = client(&b, &[("enable.idempotence", "true")]);
        for (i, v) in values("in", 200).iter().enumerate() {
            send(&p, "ctp-in", (i % 2) as i32, v);
        }
        p.flush(T).expect("flush");
    }
    let settings = [
        ("group.id", "ctp"),
        ("enable.auto.commit", "false"),
        ("auto.offset.reset", "earliest"),
        ("isolation.level", "read_committed"),
    ];
    // One round: up to `n` inputs in one transaction; false when nothing was left.
    let round = |p: &BaseProducer, c: &BaseConsumer, n: usize, commit: bool| -> bool {
        let mut got = Vec::new();
        common::kafka::poll_n(c, n, Duration::from_secs(3), |m| {
            got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        });
        if got.is_empty() {
            return false;
        }
        p.begin_transaction().expect("begin");
        for (i, v) in got.iter().enumerate() {
            send(p, "ctp-out", (i % 2) as i32, &v.replace("in", "out"));
        }
        let positions: TopicPartitionList = c.position().expect("position");
        p.send_offsets_to_transaction(&positions, &c.group_metadata().expect("group"), T)
            .expect("send offsets");
        if commit {
            p.commit_transaction(T).expect("commit");
        } else {
            p.flush(T).expect("flush");
        }
        true
    };
    {
        let c = assigned(&b, &settings, "ctp-in", 2, Offset::Stored);
        let p = txn_producer(&b, "ctp-tx", &[]);
        for _ in 0..4 {
            assert!(round(&p, &c, 25, true));
        }
        // Mid-transaction: its outputs and offsets are written but not committed.
        assert!(round(&p, &c, 25, false));
        b.kill9();
    }
    b.restart();
    let c = assigned(&b, &settings, "ctp-in", 2, Offset::Stored);
    let p = txn_producer(&b, "ctp-tx", &[]);
    while round(&p, &c, 40, true) {}
    assert_eq!(
        read_all(&b, "ctp-out", 2, "read_committed"),
        values("out", 200)
    );
    // The offsets resumed where the last commit left them: the group is at the end.
    let committed = c
        .committed(Duration::from_secs(10))
        .expect("committed offsets");
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    assert!(total >= 200, "committed {total}");
}

#[test]
fn list_and_describe_transactions() {
    let (_tmp, data) = data_dir();
    let b = Broker::start(&data, &[]);
    create_topics(&b, &[("tx-list", 2)]);
    let open = txn_producer(&b, "list-open", &[]);
    open.begin_transaction().expect("begin");
    send(&open, "tx-list", 1, "x");
    open.flush(T).expect("flush");
    let done = txn_producer(&b, "list-done", &[]);
    done.begin_transaction().expect("begin");
    send(&done, "tx-list", 0, "y");
    done.commit_transaction(T).expect("commit");
    wait_state(&b, "list-done", "CompleteCommit");

    let (code, state, _, parts) = describe(&b, "list-open");
    assert_eq!((code, state.as_str()), (0, "Ongoing"));
    assert_eq!(parts, vec![("tx-list".to_owned(), 1)]);
    assert_eq!(describe(&b, "nobody").0, 105, "TRANSACTIONAL_ID_NOT_FOUND");

    let list = |req: ListTransactionsRequest,
                version: i16|
     -> (i16, BTreeMap<String, String>, Vec<String>) {
        let mut s = connect(&b);
        let r: ListTransactionsResponse = call(&mut s, ApiKey::ListTransactions, version, &req);
        let states = r
            .transaction_states
            .iter()
            .map(|t| {
                (
                    t.transactional_id.to_string(),
                    t.transaction_state.to_string(),
                )
            })
            .collect();
        let unknown = r
            .unknown_state_filters
            .iter()
            .map(|s| s.to_string())
            .collect();
        (r.error_code, states, unknown)
    };
    let (code, all, _) = list(
        ListTransactionsRequest::default().with_duration_filter(-1),
        1,
    );
    assert_eq!(code, 0);
    assert_eq!(all.get("list-open").map(String::as_str), Some("Ongoing"));
    assert_eq!(
        all.get("list-done").map(String::as_str),
        Some("CompleteCommit")
    );
    let (_, ongoing, unknown) = list(
        ListTransactionsRequest::default()
            .with_state_filters(vec![
                StrBytes::from_static_str("Ongoing"),
                StrBytes::from_static_str("Bogus"),
            ])
            .with_duration_filter(-1),
        1,
    );
    assert_eq!(ongoing.keys().collect::<Vec<_>>(), vec!["list-open"]);
    assert_eq!(unknown, vec!["Bogus"]);
    // Running at least an hour: none.
    let (_, long, _) = list(
        ListTransactionsRequest::default().with_duration_filter(3_600_000),
        1,
    );
    assert!(long.is_empty(), "{long:?}");
    // v2: a pattern the whole id must match.
    let (_, matched, _) = list(
        ListTransactionsRequest::default()
            .with_duration_filter(-1)
            .with_transactional_id_pattern(Some(StrBytes::from_static_str("list-d.*"))),
        2,
    );
    assert_eq!(matched.keys().collect::<Vec<_>>(), vec!["list-done"]);
}

/// KIP-890: a transactional Produce to a partition that was not added to the producer's
/// transaction is refused before anything is written; transactional records in a request
/// without a transactional id are refused as Kafka refuses them.
#[test]
fn produce_outside_the_transaction_is_refused() {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let (_tmp, data) = data_dir();
    let b = Broker::start(&data, &[]);
    create_topics(&b, &[("tx-verify", 1)]);
    let mut s = connect(&b);
    let init: InitProducerIdResponse = call(
        &mut s,
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(tid("raw-tx")))
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(kafka_protocol::messages::ProducerId(-1))
            .with_producer_epoch(-1),
    );
    assert_eq!(init.error_code, 0);
    let record = Record {
        transactional: true,
        delete_horizon: false,
        control: false,
        partition_leader_epoch: -1,
        producer_id: init.producer_id.0,
        producer_epoch: init.producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: 0,
        timestamp: 0,
        key: None,
        value: Some(Bytes::from_static(b"sneaky")),
        headers: Default::default(),
    };
    let mut batch = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut batch,
        [record].iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("batch");
    let produce = ProduceRequest::default()
        .with_transactional_id(Some(tid("raw-tx")))
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(kafka_protocol::messages::TopicName(
                StrBytes::from_static_str("tx-verify"),
            ))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch.freeze()))])]);
    let r: ProduceResponse = call(&mut s, ApiKey::Produce, 9, &produce);
    assert_eq!(
        r.responses[0].partition_responses[0].error_code, 48,
        "INVALID_TXN_STATE"
    );
    // The same transactional batch in a request without a transactional id: Kafka's
    // TRANSACTIONAL_ID_AUTHORIZATION_FAILED, nothing written.
    let r: ProduceResponse = call(
        &mut s,
        ApiKey::Produce,
        9,
        &produce.with_transactional_id(None),
    );
    assert_eq!(
        r.responses[0].partition_responses[0].error_code, 53,
        "TRANSACTIONAL_ID_AUTHORIZATION_FAILED"
    );
    assert_eq!(common::kafka::watermarks(&b, "tx-verify", 0), (0, 0));
}

/// ACLs as Kafka: WRITE on the transactional id to initialise it, DESCRIBE to find its
/// coordinator; a refusal is TRANSACTIONAL_ID_AUTHORIZATION_FAILED.
#[test]
fn transactional_ids_follow_the_acls() {
    let (_tmp, data) = data_dir();
    let bindings = r#"[
        {resource_type = "topic", resource_name = "*", principal = "User:ANONYMOUS", operations = ["all"]},
        {resource_type = "group", resource_name = "*", principal = "User:ANONYMOUS", operations = ["all"]},
        {resource_type = "cluster", principal = "User:ANONYMOUS", operations = ["all"]},
        {resource_type = "transactional_id", resource_name = "allowed", principal = "User:ANONYMOUS", operations = ["write", "describe"]},
        {resource_type = "transactional_id", resource_name = "seen", principal = "User:ANONYMOUS", operations = ["describe"]}
    ]"#;
    let b = Broker::start(
        &data,
        &[
            ("PORTASK_ACL__ENABLED", "true"),
            ("PORTASK_ACL__BINDINGS", bindings),
        ],
    );
    create_topics(&b, &[("tx-acl", 1)]);
    let p = txn_producer(&b, "allowed", &[]);
    p.begin_transaction().expect("begin");
    send(&p, "tx-acl", 0, "ok");
    p.commit_transaction(T).expect("commit");

    let mut s = connect(&b);
    let init = |s: &mut TcpStream, id: &str| -> i16 {
        let r: InitProducerIdResponse = call(
            s,
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(Some(tid(id)))
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(kafka_protocol::messages::ProducerId(-1))
                .with_producer_epoch(-1),
        );
        r.error_code
    };
    assert_eq!(init(&mut s, "seen"), 53, "no WRITE on the id");
    assert_eq!(init(&mut s, "hidden"), 53);
    let find = |s: &mut TcpStream, id: &str| -> i16 {
        use kafka_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse};
        let r: FindCoordinatorResponse = call(
            s,
            ApiKey::FindCoordinator,
            3,
            &FindCoordinatorRequest::default()
                .with_key(StrBytes::from_string(id.to_owned()))
                .with_key_type(1),
        );
        r.error_code
    };
    assert_eq!(find(&mut s, "seen"), 0);
    assert_eq!(find(&mut s, "hidden"), 53);
    // A librdkafka producer with a refused id fails at once with the authorization error.
    let refused: BaseProducer = client(&b, &[("transactional.id", "hidden")]);
    let e = refused
        .init_transactions(T)
        .expect_err("no DESCRIBE/WRITE on the id");
    assert!(e.to_string().to_lowercase().contains("authoriz"), "{e}");
}

#[test]
fn transaction_timeout_above_the_maximum_is_refused() {
    let (_tmp, data) = data_dir();
    let b = Broker::start(
        &data,
        &[("PORTASK_KAFKA__TRANSACTION_MAX_TIMEOUT_MS", "5000")],
    );
    let mut s = connect(&b);
    let r: InitProducerIdResponse = call(
        &mut s,
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(tid("too-slow")))
            .with_transaction_timeout_ms(6000)
            .with_producer_id(kafka_protocol::messages::ProducerId(-1))
            .with_producer_epoch(-1),
    );
    assert_eq!(r.error_code, 50, "INVALID_TRANSACTION_TIMEOUT");
}

/// KIP-447: while a transaction holds offsets for a group, OffsetFetch with
/// `require_stable` answers UNSTABLE_OFFSET_COMMIT for those partitions (a read_committed
/// consumer retries); once committed, the transaction's offset is the group's.
#[test]
fn pending_transactional_offsets_are_unstable_until_committed() {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    use kafka_protocol::messages::{GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName};
    let (_tmp, data) = data_dir();
    let b = Broker::start(&data, &[]);
    create_topics(&b, &[("stable-in", 1), ("stable-out", 1)]);
    let consumer = assigned(
        &b,
        &[("group.id", "stable-g")],
        "stable-in",
        1,
        Offset::Beginning,
    );
    let p = txn_producer(&b, "stable-tx", &[]);
    p.begin_transaction().expect("begin");
    send(&p, "stable-out", 0, "v");
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("stable-in", 0, Offset::Offset(42))
        .expect("tpl");
    p.send_offsets_to_transaction(&offsets, &consumer.group_metadata().expect("group"), T)
        .expect("send offsets");
    let fetch = |stable: bool| -> (i16, i64) {
        let mut s = connect(&b);
        let r: OffsetFetchResponse = call(
            &mut s,
            ApiKey::OffsetFetch,
            7,
            &OffsetFetchRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("stable-g")))
                .with_require_stable(stable)
                .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("stable-in")))
                    .with_partition_indexes(vec![0])])),
        );
        let part = &r.topics[0].partitions[0];
        (part.error_code, part.committed_offset)
    };
    assert_eq!(
        fetch(true),
        (88, -1),
        "UNSTABLE_OFFSET_COMMIT while pending"
    );
    assert_eq!(fetch(false), (0, -1), "nothing committed yet");
    p.commit_transaction(T).expect("commit");
    wait_state(&b, "stable-tx", "CompleteCommit");
    assert_eq!(fetch(true), (0, 42));
}

/// A crash between EndTxn's durable PrepareCommit and its markers: the transaction log is
/// left with PrepareCommit as the last state of the id (written here into the stopped
/// broker's log, which is what a `kill -9` at that moment leaves), and the restarted
/// coordinator completes the commit in every partition on its own.
#[test]
fn a_prepared_commit_is_completed_after_restart() {
    use portask::kafka::txn::state::{TxnMeta, TxnState};
    let (_tmp, data) = data_dir();
    let mut b = Broker::start(&data, &[]);
    create_topics(&b, &[("tx-prep", 4)]);
    let p = txn_producer(&b, "tx-prep", &[]);
    p.begin_transaction().expect("begin");
    for (i, v) in values("prep", 40).iter().enumerate() {
        send(&p, "tx-prep", (i % 4) as i32, v);
    }
    p.flush(T).expect("flush");
    assert_eq!(describe(&b, "tx-prep").1, "Ongoing");
    b.kill9();
    drop(p);

    let shard = portask::kafka::txn::txn_owner("tx-prep", 2);
    let path = data
        .join(shard.to_string())
        .join("transactions")
        .join("transactions.log");
    let bytes = std::fs::read(&path).expect("transaction log");
    let mut last: Option<TxnMeta> = None;
    for payload in portask::storage::frame::split(&bytes).0 {
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(payload);
        let m = rkyv::from_bytes::<TxnMeta, rkyv::rancor::Error>(&aligned).expect("record");
        if m.id == "tx-prep" {
            last = Some(m);
        }
    }
    let mut prepared = last.expect("the id's state");
    assert_eq!(prepared.state, TxnState::Ongoing);
    assert_eq!(prepared.partitions.len(), 4);
    prepared.state = TxnState::PrepareCommit;
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(&prepared).expect("encode");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open log");
    f.write_all(&portask::storage::frame::framed(&payload))
        .expect("append");
    drop(f);

    b.restart();
    wait_state(&b, "tx-prep", "CompleteCommit");
    assert_eq!(
        read_all(&b, "tx-prep", 4, "read_committed"),
        values("prep", 40)
    );
}
