"""kafka-python against Portask: admin, keyed produce with acks=all and compression,
consume from the beginning, a two-member consumer group with commits and a rebalance,
group listing, offset look-ups, headers, idempotence, topic deletion.

Usage: py_kafka_python.py BOOTSTRAP [API_VERSION]
API_VERSION (e.g. 1.0) pins kafka-python to an old broker version, so it sends the old
request versions it would send to such a broker instead of negotiating the newest."""

import sys
import threading
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

from scenario import Scenarios, Skip, check, unique, wait_for

BOOTSTRAP = sys.argv[1]
API = tuple(int(x) for x in sys.argv[2].split(".")) if len(sys.argv) > 2 else None
LABEL = "kafka-python" + (f"@{sys.argv[2]}" if API else "")
common = {"bootstrap_servers": BOOTSTRAP, "request_timeout_ms": 15000}
if API:
    common["api_version"] = API
s = Scenarios(LABEL)
topic = unique("kp")
admin = None
records = []  # (key, value, headers) produced to `topic`, in order per partition


def create_topic():
    global admin
    admin = KafkaAdminClient(**common)
    admin.create_topics({topic: {"num_partitions": 2, "replication_factor": 1}})
    wait_for(lambda: topic in admin.list_topics(), 10, "topic in metadata")


def produce(compression=None, n=20, headers=False):
    cfg = dict(common, acks="all", linger_ms=5)
    if compression:
        cfg["compression_type"] = compression
    p = KafkaProducer(**cfg)
    futures = []
    for i in range(n):
        key = f"key-{i % 4}".encode()
        value = f"{compression or 'none'}-{i}-".encode() + b"x" * 200
        hdrs = [("trace", f"t{i}".encode()), ("n", str(i).encode())] if headers else None
        futures.append(p.send(topic, key=key, value=value, headers=hdrs))
        records.append((key, value, hdrs or []))
    metas = [f.get(timeout=15) for f in futures]
    p.close()
    # Equal keys land on one partition, in order.
    by_key = {}
    for (key, _, _), m in zip(records[-n:], metas):
        by_key.setdefault(key, set()).add(m.partition)
    check(all(len(v) == 1 for v in by_key.values()), f"keys split over partitions: {by_key}")
    return f"{n} records"


def compression(codec):
    if API and API < (2, 1) and codec == "zstd":
        raise Skip("zstd needs Produce v7 (Kafka 2.1)")
    return produce(codec)


def consume_all():
    c = KafkaConsumer(**common, auto_offset_reset="earliest", enable_auto_commit=False,
                      consumer_timeout_ms=3000)
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    got = []
    deadline = time.monotonic() + 20
    while len(got) < len(records) and time.monotonic() < deadline:
        for batch in c.poll(timeout_ms=500).values():
            got.extend(batch)
    c.close()
    return got


def consume_from_beginning():
    got = consume_all()
    check(len(got) == len(records), f"consumed {len(got)} of {len(records)}")
    want = sorted((k, v) for k, v, _ in records)
    check(sorted((m.key, m.value) for m in got) == want, "consumed records differ")
    return f"{len(got)} records"


def headers():
    produce(n=5, headers=True)
    got = consume_all()
    by_value = {m.value: m for m in got}
    for _, value, hdrs in records[-5:]:
        m = by_value.get(value)
        check(m is not None, "record with headers not consumed")
        check(list(m.headers) == hdrs, f"headers {m.headers} != {hdrs}")


group = unique("kp-group")
members = {}


class Member(threading.Thread):
    def __init__(self, name):
        super().__init__(daemon=True)
        self.name = name
        self.consumer = KafkaConsumer(**common, group_id=group, auto_offset_reset="earliest",
                                      enable_auto_commit=False, heartbeat_interval_ms=500,
                                      session_timeout_ms=10000)
        self.consumer.subscribe([topic])
        self.assigned = set()
        self.seen = 0
        self.commits = 0
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            while not self.stop.is_set():
                batches = self.consumer.poll(timeout_ms=200)
                self.assigned = {tp.partition for tp in self.consumer.assignment()}
                n = sum(len(b) for b in batches.values())
                if n:
                    self.seen += n
                    self.consumer.commit()
                    self.commits += 1
            self.consumer.close()
        except Exception as e:  # noqa: BLE001
            self.error = e


def group_two_members():
    for name in ("a", "b"):
        members[name] = Member(name)
        members[name].start()
    wait_for(lambda: members["a"].assigned and members["b"].assigned
             and members["a"].assigned | members["b"].assigned == {0, 1}
             and not members["a"].assigned & members["b"].assigned, 30,
             "two members with one partition each")
    wait_for(lambda: members["a"].seen + members["b"].seen >= len(records), 30,
             "both members consumed everything")
    for m in members.values():
        check(m.error is None, f"member {m.name}: {m.error}")
    offsets = wait_for(lambda: committed_total() >= len(records) and committed_total(), 15,
                       "committed offsets cover every record")
    return f"assignments a={sorted(members['a'].assigned)} b={sorted(members['b'].assigned)}, committed {offsets}"


def committed_total():
    offsets = admin.list_group_offsets({group: None}) if hasattr(admin, "list_group_offsets") else {}
    per = offsets.get(group, offsets)
    return sum(o.offset for o in per.values() if o is not None and o.offset >= 0)


def rebalance_on_leave():
    members["b"].stop.set()
    members["b"].join(15)
    check(members["b"].error is None, f"member b: {members['b'].error}")
    wait_for(lambda: members["a"].assigned == {0, 1}, 30, "remaining member owns both partitions")
    check(members["a"].error is None, f"member a: {members['a'].error}")


def list_describe_groups():
    listed = admin.list_groups()
    ids = [g.get("group_id") if isinstance(g, dict) else g[0] for g in listed]
    check(group in ids, f"{group} not in list_groups {ids}")
    described = admin.describe_groups([group])
    d = described[group] if isinstance(described, dict) else described[0]
    d = d if isinstance(d, dict) else d.__dict__
    check(d.get("group_state") in ("Stable", "PreparingRebalance", "CompletingRebalance"),
          f"group state {d.get('group_state')}")
    check(len(d.get("members", [])) == 1, f"members {d.get('members')}")
    members["a"].stop.set()
    members["a"].join(15)


def list_offsets():
    c = KafkaConsumer(**common)
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    begin = c.beginning_offsets(tps)
    end = c.end_offsets(tps)
    check(all(v == 0 for v in begin.values()), f"earliest {begin}")
    check(sum(end.values()) == len(records), f"latest {end} for {len(records)} records")
    # A timestamp before everything finds offset 0; one in the future finds nothing.
    by_time = c.offsets_for_times({tp: 0 for tp in tps})
    check(all(v is not None and v.offset == 0 for v in by_time.values()), f"by time 0: {by_time}")
    future = c.offsets_for_times({tp: int(time.time() * 1000) + 3_600_000 for tp in tps})
    check(all(v is None for v in future.values()), f"by future time: {future}")
    c.close()
    return f"latest {dict((tp.partition, o) for tp, o in end.items())}"


def idempotent_producer():
    if API and API < (0, 11):
        raise Skip("idempotence needs Kafka 0.11")
    p = KafkaProducer(**common, acks="all", enable_idempotence=True, max_in_flight_requests_per_connection=5)
    futures = [p.send(topic, key=b"idem", value=f"idem-{i}".encode()) for i in range(50)]
    metas = [f.get(timeout=15) for f in futures]
    p.close()
    offs = [m.offset for m in metas]
    check(offs == list(range(offs[0], offs[0] + 50)), f"offsets not contiguous: {offs[:5]}…")
    records.extend((b"idem", f"idem-{i}".encode(), []) for i in range(50))


def delete_topic():
    admin.delete_topics([topic])
    wait_for(lambda: topic not in admin.list_topics(), 10, "topic gone from metadata")
    admin.close()


s.run("create_topic", create_topic)
s.run("produce_keyed_acks_all", produce)
for codec in ("gzip", "snappy", "lz4", "zstd"):
    s.run(f"compression_{codec}", compression, codec)
s.run("headers", headers)
s.run("idempotent_producer", idempotent_producer)
s.run("consume_from_beginning", consume_from_beginning)
s.run("group_two_members_commit", group_two_members)
s.run("rebalance_on_leave", rebalance_on_leave)
s.run("list_describe_groups", list_describe_groups)
s.run("list_offsets", list_offsets)
s.run("delete_topic", delete_topic)
s.finish()
