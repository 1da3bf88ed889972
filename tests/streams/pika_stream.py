"""pika against a Portask stream queue, driven by tests/streams/safety.rs.

usage: pika_stream.py PORT QUEUE publish|consume N

publish: declares QUEUE as a stream, publishes N messages with properties and headers
         under publisher confirms (an unconfirmed one exits 1), prints "published N".
consume: consumes QUEUE from x-stream-offset "first" (prefetch, manual acks), prints one
         JSON line per delivery: body, content_type, message_id, priority, headers.
"""
import json
import sys

import pika


def plain(v):
    """A header value as JSON can hold it (pika gives bytes for some strings)."""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


def main():
    port, queue, mode, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    params = pika.ConnectionParameters(
        host="127.0.0.1",
        port=port,
        credentials=pika.PlainCredentials("guest", "guest"),
    )
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    if mode == "publish":
        ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "stream"})
        ch.confirm_delivery()
        for i in range(n):
            ch.basic_publish(
                exchange="",
                routing_key=queue,
                body=("pika %d" % i).encode(),
                properties=pika.BasicProperties(
                    content_type="text/plain",
                    delivery_mode=2,
                    priority=4,
                    message_id="pika-%d" % i,
                    headers={"tenant": "acme", "attempt": i, "nested": {"k": "v"}},
                ),
                mandatory=True,
            )
        print("published %d" % n)
    elif mode == "consume":
        ch.basic_qos(prefetch_count=50)
        got = []

        def on_message(channel, method, props, body):
            headers = dict(props.headers or {})
            got.append(
                {
                    "body": body.decode(),
                    "content_type": props.content_type,
                    "message_id": props.message_id,
                    "priority": props.priority,
                    "headers": plain(headers),
                }
            )
            channel.basic_ack(method.delivery_tag)
            if len(got) >= n:
                channel.stop_consuming()

        ch.basic_consume(queue, on_message, arguments={"x-stream-offset": "first"})
        conn.call_later(20, ch.stop_consuming)
        ch.start_consuming()
        for g in got:
            print(json.dumps(g, sort_keys=True))
    conn.close()


if __name__ == "__main__":
    main()
