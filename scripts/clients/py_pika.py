"""pika (BlockingConnection) against Portask's AMQP 0-9-1.

Usage: py_pika.py AMQP_URL   (e.g. amqp://guest:guest@127.0.0.1:5672/%2f)"""

import sys
import time

import pika
from pika.exceptions import ChannelClosedByBroker, UnroutableError

from scenario import Scenarios, check, unique, wait_for

URL = sys.argv[1]
s = Scenarios("pika")


def connect(**kw):
    params = pika.URLParameters(URL)
    for k, v in kw.items():
        setattr(params, k, v)
    return pika.BlockingConnection(params)


conn = connect()
ch = conn.channel()
ex = unique("pk-ex")
q = unique("pk-q")


def declare_bind():
    ch.exchange_declare(ex, "direct", durable=False, auto_delete=False)
    ok = ch.queue_declare(q, durable=False)
    check(ok.method.queue == q, f"declare-ok names {ok.method.queue}")
    ch.queue_bind(q, ex, routing_key="rk")
    anon = ch.queue_declare("", exclusive=True).method.queue
    check(anon.startswith("amq.gen-"), f"server-named queue {anon}")
    again = ch.queue_declare(q, passive=True)
    check(again.method.message_count == 0, "new queue not empty")


def ch_get_last():
    """One auto-acked basic.get: (method, properties, body), or None on an empty queue."""
    r = ch.basic_get(q, auto_ack=True)
    return r if r[0] else None


def publish_properties_headers():
    headers = {"str": "v", "int": 42, "neg": -7, "big": 2**40, "bool": True,
               "list": [1, "two"], "table": {"inner": "x"}}
    props = pika.BasicProperties(
        content_type="application/json", content_encoding="utf-8", headers=headers,
        delivery_mode=2, priority=3, correlation_id="corr-1", reply_to="replies",
        expiration="60000", message_id="msg-1", timestamp=1_700_000_000, type="order",
        user_id="guest", app_id="compat")
    ch.basic_publish(ex, "rk", b'{"a":1}', props)
    method, got, body = wait_for(ch_get_last, 5, "message routed to queue")
    check(body == b'{"a":1}', f"body {body!r}")
    for field in ("content_type", "content_encoding", "delivery_mode", "priority",
                  "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                  "type", "user_id", "app_id"):
        check(getattr(got, field) == getattr(props, field),
              f"{field}: {getattr(got, field)!r} != {getattr(props, field)!r}")
    for k, v in headers.items():
        gv = got.headers.get(k)
        if isinstance(gv, bytes):
            gv = gv.decode()
        if isinstance(gv, list):
            gv = [x.decode() if isinstance(x, bytes) else x for x in gv]
        if isinstance(gv, dict):
            gv = {a: (b.decode() if isinstance(b, bytes) else b) for a, b in gv.items()}
        check(gv == v, f"header {k}: {gv!r} != {v!r}")


def consume_ack():
    n = 10
    for i in range(n):
        ch.basic_publish(ex, "rk", f"m{i}".encode())
    got = []

    def on_msg(c, method, props, body):
        got.append(body)
        c.basic_ack(method.delivery_tag)

    tag = ch.basic_consume(q, on_msg)
    deadline = time.monotonic() + 10
    while len(got) < n and time.monotonic() < deadline:
        conn.process_data_events(0.1)
    ch.basic_cancel(tag)
    check(got == [f"m{i}".encode() for i in range(n)], f"consumed {got}")
    left = ch.queue_declare(q, passive=True).method.message_count
    check(left == 0, f"{left} left after acks")


def basic_get():
    empty = ch.basic_get(q)
    check(empty == (None, None, None), f"get on empty queue {empty}")
    ch.basic_publish(ex, "rk", b"g1")
    method, _, body = wait_for(lambda: (r := ch.basic_get(q)) and r[0] and r, 5, "get-ok")
    check(body == b"g1", f"body {body!r}")
    check(method.message_count == 0, f"message_count {method.message_count}")
    ch.basic_ack(method.delivery_tag)


def confirms():
    c = conn.channel()
    c.confirm_delivery()
    for i in range(20):
        c.basic_publish(ex, "rk", f"c{i}".encode(),
                        pika.BasicProperties(delivery_mode=2))  # raises if nacked
    try:
        c.basic_publish(ex, "no-such-key", b"x", mandatory=True)
        raise AssertionError("unroutable mandatory message was not returned")
    except UnroutableError:
        pass
    c.close()
    ch.queue_purge(q)


def prefetch():
    c = conn.channel()
    c.basic_qos(prefetch_count=2)
    for i in range(5):
        c.basic_publish(ex, "rk", f"p{i}".encode())
    got = []
    tag = c.basic_consume(q, lambda ch_, m, p, b: got.append(m))
    conn.process_data_events(1.0)
    check(len(got) == 2, f"{len(got)} unacked deliveries with prefetch 2")
    c.basic_ack(got[0].delivery_tag)
    conn.process_data_events(1.0)
    check(len(got) == 3, f"{len(got)} deliveries after one ack")
    c.basic_ack(got[-1].delivery_tag, multiple=True)
    wait_for(lambda: conn.process_data_events(0.1) or len(got) == 5, 5, "the rest")
    c.basic_ack(got[-1].delivery_tag, multiple=True)
    c.basic_cancel(tag)
    c.close()


def nack_requeue():
    ch.basic_publish(ex, "rk", b"n1")
    m1 = wait_for(lambda: ch.basic_get(q)[0], 5, "first get")
    check(not m1.redelivered, "fresh message marked redelivered")
    ch.basic_nack(m1.delivery_tag, requeue=True)
    m2 = wait_for(lambda: ch.basic_get(q)[0], 5, "requeued message")
    check(m2.redelivered, "requeued message not marked redelivered")
    ch.basic_nack(m2.delivery_tag, requeue=False)
    check(ch.queue_declare(q, passive=True).method.message_count == 0, "nack without requeue kept it")


def reject():
    ch.basic_publish(ex, "rk", b"r1")
    m = wait_for(lambda: ch.basic_get(q)[0], 5, "get")
    ch.basic_reject(m.delivery_tag, requeue=True)
    m = wait_for(lambda: ch.basic_get(q)[0], 5, "requeued after reject")
    check(m.redelivered, "not redelivered")
    ch.basic_reject(m.delivery_tag, requeue=False)
    check(ch.queue_declare(q, passive=True).method.message_count == 0, "reject dropped nothing")


def tx():
    c = conn.channel()
    c.tx_select()
    c.basic_publish(ex, "rk", b"t-rolled-back")
    c.tx_rollback()
    check(c.queue_declare(q, passive=True).method.message_count == 0, "rolled back publish landed")
    c.basic_publish(ex, "rk", b"t-committed")
    c.tx_commit()
    m, _, body = wait_for(lambda: (r := c.basic_get(q)) and r[0] and r, 5, "committed message")
    check(body == b"t-committed", f"body {body!r}")
    # An ack inside a transaction takes effect on commit only.
    c.basic_ack(m.delivery_tag)
    c.tx_rollback()
    c.close()  # the rolled-back ack leaves the message unacked: closing requeues it
    m = wait_for(lambda: ch.basic_get(q, auto_ack=True)[0], 5, "message whose ack was rolled back")
    check(m.redelivered, "rolled-back ack: message not redelivered")


def exclusive_queue():
    ex_q = ch.queue_declare("", exclusive=True).method.queue
    other = connect()
    oc = other.channel()
    try:
        oc.queue_declare(ex_q, passive=True)
        raise AssertionError("another connection could use an exclusive queue")
    except ChannelClosedByBroker as e:
        check(e.reply_code == 405, f"reply code {e.reply_code}, want 405 RESOURCE_LOCKED")
    other.close()


def ttl_dead_letter():
    dlx = unique("pk-dlx")
    dlq = unique("pk-dlq")
    src = unique("pk-ttl")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(src, arguments={"x-message-ttl": 200, "x-dead-letter-exchange": dlx})
    ch.basic_publish("", src, b"expires")
    m, props, body = wait_for(lambda: (r := ch.basic_get(dlq, auto_ack=True)) and r[0] and r,
                              10, "dead-lettered message")
    check(body == b"expires", f"body {body!r}")
    death = (props.headers or {}).get("x-death")
    check(death and death[0].get("reason") in (b"expired", "expired"), f"x-death {death}")
    ch.queue_delete(src)
    ch.queue_delete(dlq)
    ch.exchange_delete(dlx)


def blocked_capability():
    caps = conn._impl.server_capabilities
    check(caps.get("connection.blocked") is True, f"server capabilities {caps}")
    check(caps.get("consumer_cancel_notify") is True, "consumer_cancel_notify missing")
    c = connect(blocked_connection_timeout=30)
    c.add_on_connection_blocked_callback(lambda *a: None)
    c.add_on_connection_unblocked_callback(lambda *a: None)
    c.channel().basic_publish(ex, "rk", b"b")
    c.close()
    ch.queue_purge(q)


def heartbeat_idle():
    c = connect(heartbeat=1)
    check(c._impl.params.heartbeat == 1, "heartbeat not negotiated")
    c.sleep(3.5)  # idle; pika answers heartbeats while sleeping
    check(c.is_open, "connection closed while idle with heartbeats")
    c.channel().basic_publish(ex, "rk", b"after-idle")
    c.close()
    ch.queue_purge(q)


def close_clean():
    c = connect()
    chan = c.channel()
    chan.close()
    check(chan.is_closed, "channel not closed")
    chan2 = c.channel()
    check(chan2.is_open, "second channel not open")
    c.close()
    check(c.is_closed, "connection not closed")


def large_message():
    body = bytes(range(256)) * 4096 + b"end"  # 1 MiB: many body frames
    ch.basic_publish(ex, "rk", body)
    _, _, got = wait_for(ch_get_last, 5, "the large message")
    check(got == body, f"{len(got)} bytes back of {len(body)}")


def channel_error_recovery():
    c = conn.channel()
    try:
        c.queue_declare(unique("pk-missing"), passive=True)
        raise AssertionError("passive declare of a missing queue succeeded")
    except ChannelClosedByBroker as e:
        check(e.reply_code == 404, f"reply code {e.reply_code}, want 404 NOT_FOUND")
    check(conn.is_open, "a channel error closed the connection")
    c2 = conn.channel()
    check(c2.queue_declare(q, passive=True).method.queue == q, "new channel unusable")
    c2.close()


def expect_channel_error(code, fn):
    c = conn.channel()
    try:
        fn(c)
        raise AssertionError(f"no channel error (want {code})")
    except ChannelClosedByBroker as e:
        check(e.reply_code == code, f"reply code {e.reply_code}, want {code}")
    check(conn.is_open, "a channel error closed the connection")


def precondition_errors():
    # Publishing to a missing exchange: 404 NOT_FOUND (pika sees it on the next sync call).
    expect_channel_error(404, lambda c: (c.basic_publish(unique("pk-nowhere"), "k", b"x"),
                                         c.queue_declare(q, passive=True)))
    # Redeclaring with another type or other arguments: 406 PRECONDITION_FAILED.
    expect_channel_error(406, lambda c: c.exchange_declare(ex, "fanout"))
    expect_channel_error(406, lambda c: c.queue_declare(q, arguments={"x-max-length": 5}))
    # A reserved name: 403 ACCESS_REFUSED.
    expect_channel_error(403, lambda c: c.queue_declare("amq.mine"))


def requeue_on_close():
    c1 = conn.channel()
    ch.basic_publish(ex, "rk", b"held")
    m = wait_for(lambda: c1.basic_get(q)[0], 5, "get")
    check(not m.redelivered, "fresh message redelivered")
    c1.close()  # unacked: back to the queue, marked redelivered
    m2 = wait_for(lambda: ch.basic_get(q, auto_ack=True)[0], 5, "requeued message")
    check(m2.redelivered, "message requeued by a closed channel not marked redelivered")


def exclusive_consumer():
    c1, c2 = conn.channel(), conn.channel()
    c1.basic_consume(q, lambda *a: None, exclusive=True)
    try:
        c2.basic_consume(q, lambda *a: None)
        raise AssertionError("second consumer on an exclusively consumed queue")
    except ChannelClosedByBroker as e:
        check(e.reply_code == 403, f"reply code {e.reply_code}, want 403 ACCESS_REFUSED")
    c1.close()


def priority_queue():
    pq = unique("pk-prio")
    ch.queue_declare(pq, arguments={"x-max-priority": 10})
    for prio in (1, 9, 5):
        ch.basic_publish("", pq, f"p{prio}".encode(), pika.BasicProperties(priority=prio))
    got = [wait_for(lambda: ch.basic_get(pq, auto_ack=True)[2], 5, "priority message")
           for _ in range(3)]
    check(got == [b"p9", b"p5", b"p1"], f"order {got}")
    ch.queue_delete(pq)


def consumer_cancel_notify():
    tmp = unique("pk-cancel")
    c = conn.channel()
    c.queue_declare(tmp)
    cancelled = []
    c.add_on_cancel_callback(lambda frame: cancelled.append(frame))
    c.basic_consume(tmp, lambda *a: None)
    ch.queue_delete(tmp)
    wait_for(lambda: conn.process_data_events(0.1) or cancelled, 5, "basic.cancel from broker")
    c.close()


def direct_reply_to():
    """RabbitMQ's direct reply-to: replies without a reply queue."""
    rq = unique("pk-rpc")
    ch.queue_declare(rq)
    srv = conn.channel()

    def on_request(c, method, props, body):
        c.basic_publish("", props.reply_to, body.upper(),
                        pika.BasicProperties(correlation_id=props.correlation_id))
        c.basic_ack(method.delivery_tag)

    srv.basic_consume(rq, on_request)
    cl = conn.channel()
    replies = []
    cl.basic_consume("amq.rabbitmq.reply-to",
                     lambda c, m, p, b: replies.append((p.correlation_id, b)), auto_ack=True)
    for i in range(3):
        cl.basic_publish("", rq, f"ping{i}".encode(),
                         pika.BasicProperties(reply_to="amq.rabbitmq.reply-to",
                                              correlation_id=f"r{i}"))
    wait_for(lambda: conn.process_data_events(0.1) or len(replies) == 3, 5, "direct replies")
    check(sorted(replies) == [(f"r{i}", f"PING{i}".encode()) for i in range(3)],
          f"replies {replies}")
    srv.close()
    cl.close()
    ch.queue_delete(rq)


def quorum_queue():
    """x-queue-type quorum: durable only; requeues counted in x-delivery-count."""
    qq = unique("pk-qq")
    ch.queue_declare(qq, durable=True, arguments={"x-queue-type": "quorum"})
    ch.basic_publish("", qq, b"q1")
    got = wait_for(lambda: (lambda r: r if r[0] else None)(ch.basic_get(qq)), 5, "quorum get")
    ch.basic_nack(got[0].delivery_tag, requeue=True)
    again = wait_for(lambda: (lambda r: r if r[0] else None)(ch.basic_get(qq, auto_ack=True)),
                     5, "quorum redelivery")
    check(again[2] == b"q1" and again[0].redelivered, f"redelivery {again}")
    check((again[1].headers or {}).get("x-delivery-count") == 1,
          f"x-delivery-count {again[1].headers}")
    ch.queue_delete(qq)
    expect_channel_error(406, lambda c: c.queue_declare(unique("pk-qq"), durable=False,
                                                        arguments={"x-queue-type": "quorum"}))


s.run("declare_bind", declare_bind)
s.run("publish_properties_headers", publish_properties_headers)
s.run("consume_ack", consume_ack)
s.run("basic_get", basic_get)
s.run("confirms", confirms)
s.run("prefetch", prefetch)
s.run("nack_requeue", nack_requeue)
s.run("reject", reject)
s.run("tx", tx)
s.run("exclusive_queue", exclusive_queue)
s.run("ttl_dead_letter", ttl_dead_letter)
s.run("blocked_capability", blocked_capability)
s.run("heartbeat_idle", heartbeat_idle)
s.run("close_clean", close_clean)
s.run("consumer_cancel_notify", consumer_cancel_notify)
s.run("large_message", large_message)
s.run("channel_error_recovery", channel_error_recovery)
s.run("precondition_errors", precondition_errors)
s.run("requeue_on_close", requeue_on_close)
s.run("exclusive_consumer", exclusive_consumer)
s.run("priority_queue", priority_queue)
s.run("direct_reply_to", direct_reply_to)
s.run("quorum_queue", quorum_queue)
try:
    ch.queue_delete(q)
    ch.exchange_delete(ex)
    conn.close()
except Exception as e:  # noqa: BLE001
    print(f"FAIL pika cleanup: {e}")
    s.failed += 1
s.finish()
