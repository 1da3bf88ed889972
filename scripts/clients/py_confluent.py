"""confluent-kafka (librdkafka) against Portask: admin, keyed produce with acks=all and
every compression codec, headers, idempotence, consume from the beginning, a two-member
group with commits and a rebalance, group listing/description, ListOffsets by spec,
topic deletion.

Usage: py_confluent.py BOOTSTRAP"""

import sys
import threading
import time

from confluent_kafka import (Consumer, ConsumerGroupTopicPartitions, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from scenario import Scenarios, check, unique, wait_for

BOOTSTRAP = sys.argv[1]
s = Scenarios("confluent-kafka")
admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
topic = unique("ck")
records = []  # (key, value, headers)


def result(futures, timeout=15):
    return {k: f.result(timeout) for k, f in futures.items()}


def create_topic():
    result(admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)]))
    wait_for(lambda: topic in admin.list_topics(timeout=5).topics, 10, "topic in metadata")


def produce(extra=None, n=20, headers=False, label="none"):
    # murmur2: the Java client's (and kafka-python's) key hash, so both partitions get keys.
    conf = {"bootstrap.servers": BOOTSTRAP, "acks": "all", "linger.ms": 5,
            "partitioner": "murmur2_random"}
    conf.update(extra or {})
    p = Producer(conf)
    errors, parts = [], {}

    def delivered(err, msg):
        if err:
            errors.append(err)
        else:
            parts.setdefault(msg.key(), set()).add(msg.partition())

    for i in range(n):
        key = f"key-{i % 4}".encode()
        value = f"{label}-{i}-".encode() + b"y" * 200
        hdrs = [("trace", f"t{i}".encode()), ("n", str(i).encode())] if headers else None
        p.produce(topic, key=key, value=value, headers=hdrs, on_delivery=delivered)
        records.append((key, value, hdrs or []))
    left = p.flush(15)
    check(left == 0, f"{left} messages not delivered")
    check(not errors, f"delivery errors: {errors[:3]}")
    check(all(len(v) == 1 for v in parts.values()), f"keys split over partitions: {parts}")
    return f"{n} records"


def consume_all(expect):
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": unique("ck-reader"),
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, p, 0) for p in (0, 1)])
    got = []
    deadline = time.monotonic() + 20
    while len(got) < expect and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        check(m.error() is None, f"consume error {m.error()}")
        got.append(m)
    c.close()
    return got


def consume_from_beginning():
    got = consume_all(len(records))
    check(len(got) == len(records), f"consumed {len(got)} of {len(records)}")
    check(sorted((m.key(), m.value()) for m in got) == sorted((k, v) for k, v, _ in records),
          "consumed records differ")
    return f"{len(got)} records"


def headers():
    produce(n=5, headers=True, label="hdr")
    by_value = {m.value(): m for m in consume_all(len(records))}
    for _, value, hdrs in records[-5:]:
        m = by_value.get(value)
        check(m is not None, "record with headers not consumed")
        check(m.headers() == hdrs, f"headers {m.headers()} != {hdrs}")


def idempotent_producer():
    return produce({"enable.idempotence": True, "max.in.flight.requests.per.connection": 5},
                   n=50, label="idem")


group = unique("ck-group")
members = {}


class Member(threading.Thread):
    def __init__(self, name, group_id=None, extra=None):
        super().__init__(daemon=True)
        self.name = name
        conf = {
            "bootstrap.servers": BOOTSTRAP, "group.id": group_id or group,
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "heartbeat.interval.ms": 500, "session.timeout.ms": 10000,
            "client.id": f"member-{name}"}
        conf.update(extra or {})
        self.cooperative = conf.get("partition.assignment.strategy") == "cooperative-sticky"
        self.consumer = Consumer(conf)
        self.assigned = set()
        self.seen = 0
        self.stop = threading.Event()
        self.error = None

    def run(self):
        # Cooperative rebalancing hands out and takes back partitions incrementally.
        def on_assign(c, parts):
            got = {p.partition for p in parts}
            self.assigned = self.assigned | got if self.cooperative else got

        def on_revoke(c, parts):
            lost = {p.partition for p in parts}
            self.assigned = self.assigned - lost if self.cooperative else set()

        try:
            self.consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
            while not self.stop.is_set():
                m = self.consumer.poll(0.2)
                if m is None:
                    continue
                if m.error():
                    raise KafkaException(m.error())
                self.seen += 1
                self.consumer.commit(message=m, asynchronous=False)
            self.consumer.close()
        except Exception as e:  # noqa: BLE001
            self.error = e


def committed_total():
    res = result(admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)]))
    return sum(tp.offset for r in res.values() for tp in r.topic_partitions if tp.offset >= 0)


def group_two_members():
    for name in ("a", "b"):
        members[name] = Member(name)
        members[name].start()
    wait_for(lambda: members["a"].assigned and members["b"].assigned
             and members["a"].assigned | members["b"].assigned == {0, 1}, 30,
             "two members with one partition each")
    wait_for(lambda: members["a"].seen + members["b"].seen >= len(records), 30,
             "both members consumed everything")
    for m in members.values():
        check(m.error is None, f"member {m.name}: {m.error}")
    total = wait_for(lambda: committed_total() >= len(records) and committed_total(), 15,
                     "committed offsets cover every record")
    return f"a={sorted(members['a'].assigned)} b={sorted(members['b'].assigned)}, committed {total}"


def rebalance_on_leave():
    members["b"].stop.set()
    members["b"].join(15)
    check(members["b"].error is None, f"member b: {members['b'].error}")
    wait_for(lambda: members["a"].assigned == {0, 1}, 30, "remaining member owns both partitions")


def list_describe_groups():
    listed = admin.list_consumer_groups().result(15)
    ids = [g.group_id for g in listed.valid]
    check(group in ids, f"{group} not listed: {ids} errors={listed.errors}")
    d = result(admin.describe_consumer_groups([group]))[group]
    check(str(d.state).endswith("STABLE"), f"state {d.state}")
    check(len(d.members) == 1, f"members {d.members}")
    check(d.partition_assignor in ("range", "roundrobin"), f"assignor {d.partition_assignor}")
    members["a"].stop.set()
    members["a"].join(15)
    check(members["a"].error is None, f"member a: {members['a'].error}")


def list_offsets():
    tps = [TopicPartition(topic, p) for p in (0, 1)]

    def offsets(spec):
        res = result(admin.list_offsets({tp: spec for tp in tps}))
        return {tp.partition: r.offset for tp, r in res.items()}

    earliest = offsets(OffsetSpec.earliest())
    latest = offsets(OffsetSpec.latest())
    check(all(v == 0 for v in earliest.values()), f"earliest {earliest}")
    check(sum(latest.values()) == len(records), f"latest {latest} for {len(records)} records")
    at_zero = offsets(OffsetSpec.for_timestamp(0))
    check(all(v == 0 for v in at_zero.values()), f"for_timestamp(0) {at_zero}")
    future = offsets(OffsetSpec.for_timestamp(int(time.time() * 1000) + 3_600_000))
    check(all(v == -1 for v in future.values()), f"future timestamp {future}")
    mx = offsets(OffsetSpec.max_timestamp())
    check(all(0 <= mx[p] < latest[p] for p in mx), f"max_timestamp {mx}")
    return f"latest {latest}"


def cooperative_and_static_members():
    """cooperative-sticky (KIP-429) with static members (group.instance.id, KIP-345)."""
    gid = unique("ck-coop")
    extra = {"partition.assignment.strategy": "cooperative-sticky"}
    a = Member("ca", gid, dict(extra, **{"group.instance.id": "instance-a"}))
    b = Member("cb", gid, dict(extra, **{"group.instance.id": "instance-b"}))
    a.start()
    b.start()
    wait_for(lambda: len(a.assigned) == 1 and len(b.assigned) == 1 and a.assigned != b.assigned,
             30, "one partition each, cooperatively")
    wait_for(lambda: a.seen + b.seen >= len(records), 30, "everything consumed")
    d = result(admin.describe_consumer_groups([gid]))[gid]
    ids = sorted(m.group_instance_id for m in d.members)
    check(ids == ["instance-a", "instance-b"], f"static member ids {ids}")
    check(d.partition_assignor == "cooperative-sticky", f"assignor {d.partition_assignor}")
    note = f"a={sorted(a.assigned)} b={sorted(b.assigned)}"
    for m in (a, b):
        m.stop.set()
        m.join(15)
        check(m.error is None, f"member {m.name}: {m.error}")
    return note


def configs_and_partitions():
    from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource,
                                       NewPartitions, ResourceType)
    res = ConfigResource(ResourceType.TOPIC, topic)
    entry = ConfigEntry("retention.ms", "86400000",
                        incremental_operation=AlterConfigOpType.SET)
    result(admin.incremental_alter_configs([ConfigResource(ResourceType.TOPIC, topic,
                                                           incremental_configs=[entry])]))
    described = list(result(admin.describe_configs([res])).values())[0]
    check(described["retention.ms"].value == "86400000", f"retention.ms {described['retention.ms']}")
    result(admin.create_partitions([NewPartitions(topic, 3)]))
    wait_for(lambda: len(admin.list_topics(topic, timeout=5).topics[topic].partitions) == 3, 10,
             "three partitions")


def delete_topic():
    result(admin.delete_topics([topic]))
    wait_for(lambda: topic not in admin.list_topics(timeout=5).topics, 10, "topic gone")


s.run("create_topic", create_topic)
s.run("produce_keyed_acks_all", produce)
for codec in ("gzip", "snappy", "lz4", "zstd"):
    s.run(f"compression_{codec}", produce, {"compression.type": codec}, 20, False, codec)
s.run("headers", headers)
s.run("idempotent_producer", idempotent_producer)
s.run("consume_from_beginning", consume_from_beginning)
s.run("group_two_members_commit", group_two_members)
s.run("rebalance_on_leave", rebalance_on_leave)
s.run("list_describe_groups", list_describe_groups)
s.run("list_offsets", list_offsets)
s.run("cooperative_and_static_members", cooperative_and_static_members)
s.run("configs_and_partitions", configs_and_partitions)
s.run("delete_topic", delete_topic)
s.finish()
