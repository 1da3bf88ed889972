// amqplib (promise API) against Portask's AMQP 0-9-1.
// Usage: node node_amqplib.js AMQP_URL   (e.g. amqp://guest:guest@127.0.0.1:5672)
'use strict';

const amqp = require('amqplib');
const { Scenarios, Skip, check, sleep, waitFor, unique } = require('./scenario');

const URL = process.argv[2];
const s = new Scenarios('amqplib');

async function main() {
  const conn = await amqp.connect(URL);
  const ch = await conn.createChannel();
  const ex = unique('al-ex');
  const q = unique('al-q');
  const count = async (queue) => (await ch.checkQueue(queue)).messageCount;
  const getOne = (channel, queue, opts) =>
    waitFor(async () => channel.get(queue, opts), 5000, `a message on ${queue}`);

  await s.run('declare_bind', async () => {
    await ch.assertExchange(ex, 'direct', { durable: false });
    const ok = await ch.assertQueue(q, { durable: false });
    check(ok.queue === q, `declare-ok names ${ok.queue}`);
    await ch.bindQueue(q, ex, 'rk');
    const anon = await ch.assertQueue('', { exclusive: true });
    check(anon.queue.startsWith('amq.gen-'), `server-named ${anon.queue}`);
  });

  await s.run('publish_properties_headers', async () => {
    const headers = { str: 'v', int: 42, neg: -7, bool: true, float: 1.5, list: [1, 'two'], table: { inner: 'x' } };
    const props = {
      contentType: 'application/json', contentEncoding: 'utf-8', headers, deliveryMode: 2,
      priority: 3, correlationId: 'corr-1', replyTo: 'replies', expiration: '60000',
      messageId: 'msg-1', timestamp: 1700000000, type: 'order', userId: 'guest', appId: 'compat',
    };
    ch.publish(ex, 'rk', Buffer.from('{"a":1}'), props);
    const m = await getOne(ch, q, { noAck: true });
    check(m.content.toString() === '{"a":1}', `body ${m.content}`);
    for (const k of Object.keys(props)) {
      if (k === 'headers') continue;
      check(m.properties[k] === props[k], `${k}: ${m.properties[k]} != ${props[k]}`);
    }
    check(JSON.stringify(m.properties.headers) === JSON.stringify(headers),
      `headers ${JSON.stringify(m.properties.headers)}`);
  });

  await s.run('consume_ack', async () => {
    const got = [];
    const { consumerTag } = await ch.consume(q, (m) => { got.push(m.content.toString()); ch.ack(m); });
    for (let i = 0; i < 10; i++) ch.publish(ex, 'rk', Buffer.from(`m${i}`));
    await waitFor(() => got.length === 10, 10000, '10 deliveries');
    await ch.cancel(consumerTag);
    check(got.join(',') === [...Array(10).keys()].map((i) => `m${i}`).join(','), `order ${got}`);
    check((await count(q)) === 0, 'messages left after ack');
  });

  await s.run('basic_get', async () => {
    check((await ch.get(q)) === false, 'get on empty queue returned a message');
    ch.publish(ex, 'rk', Buffer.from('g1'));
    const m = await getOne(ch, q);
    check(m.content.toString() === 'g1' && m.fields.messageCount === 0, `get-ok ${JSON.stringify(m.fields)}`);
    ch.ack(m);
  });

  await s.run('confirms', async () => {
    const c = await conn.createConfirmChannel();
    const returned = [];
    c.on('return', (m) => returned.push(m));
    for (let i = 0; i < 20; i++) c.publish(ex, 'rk', Buffer.from(`c${i}`), { persistent: true });
    c.publish(ex, 'nowhere', Buffer.from('x'), { mandatory: true });
    await c.waitForConfirms();
    await waitFor(() => returned.length === 1, 5000, 'the mandatory return');
    check(returned[0].fields.replyCode === 312, `return code ${returned[0].fields.replyCode}`);
    await c.close();
    await ch.purgeQueue(q);
  });

  await s.run('prefetch', async () => {
    const c = await conn.createChannel();
    await c.prefetch(2);
    const got = [];
    const { consumerTag } = await c.consume(q, (m) => got.push(m));
    for (let i = 0; i < 5; i++) c.publish(ex, 'rk', Buffer.from(`p${i}`));
    await sleep(1000);
    check(got.length === 2, `${got.length} unacked deliveries with prefetch 2`);
    c.ack(got[0]);
    await sleep(1000);
    check(got.length === 3, `${got.length} deliveries after one ack`);
    c.ackAll();
    await waitFor(() => got.length === 5, 5000, 'the rest');
    c.ackAll();
    await c.cancel(consumerTag);
    await c.close();
  });

  await s.run('nack_requeue', async () => {
    ch.publish(ex, 'rk', Buffer.from('n1'));
    const m1 = await getOne(ch, q);
    check(!m1.fields.redelivered, 'fresh message marked redelivered');
    ch.nack(m1, false, true);
    const m2 = await getOne(ch, q);
    check(m2.fields.redelivered, 'requeued message not redelivered');
    ch.nack(m2, false, false);
    check((await count(q)) === 0, 'nack without requeue kept the message');
  });

  await s.run('reject', async () => {
    ch.publish(ex, 'rk', Buffer.from('r1'));
    const m = await getOne(ch, q);
    ch.reject(m, false);
    check((await count(q)) === 0, 'reject kept the message');
  });

  await s.run('tx', async () => {
    throw new Skip('amqplib has no tx.select');
  });

  await s.run('exclusive_queue', async () => {
    const { queue } = await ch.assertQueue('', { exclusive: true });
    const other = await amqp.connect(URL);
    const oc = await other.createChannel();
    oc.on('error', () => {});
    let code = null;
    try {
      await oc.checkQueue(queue);
    } catch (e) {
      code = e.code;
    }
    check(code === 405, `reply code ${code}, want 405 RESOURCE_LOCKED`);
    await other.close();
  });

  await s.run('ttl_dead_letter', async () => {
    const dlx = unique('al-dlx');
    const dlq = unique('al-dlq');
    const src = unique('al-ttl');
    await ch.assertExchange(dlx, 'fanout');
    await ch.assertQueue(dlq);
    await ch.bindQueue(dlq, dlx, '');
    await ch.assertQueue(src, { messageTtl: 200, deadLetterExchange: dlx });
    ch.sendToQueue(src, Buffer.from('expires'));
    const m = await waitFor(async () => ch.get(dlq, { noAck: true }), 10000, 'dead-lettered message');
    const death = m.properties.headers['x-death'];
    check(death && death[0].reason === 'expired', `x-death ${JSON.stringify(death)}`);
    await ch.deleteQueue(src);
    await ch.deleteQueue(dlq);
    await ch.deleteExchange(dlx);
  });

  await s.run('blocked_capability', async () => {
    const caps = conn.connection.serverProperties.capabilities;
    check(caps['connection.blocked'] === true, `capabilities ${JSON.stringify(caps)}`);
    check(caps.consumer_cancel_notify === true, 'consumer_cancel_notify missing');
    conn.on('blocked', () => {});
    conn.on('unblocked', () => {});
  });

  await s.run('heartbeat_idle', async () => {
    const c = await amqp.connect(`${URL}?heartbeat=1`);
    let closed = null;
    c.on('close', (e) => { closed = e || 'closed'; });
    c.on('error', () => {});
    check(c.connection.heartbeat === 1, `negotiated heartbeat ${c.connection.heartbeat}`);
    await sleep(3500);
    check(closed === null, `connection closed while idle: ${closed}`);
    const cc = await c.createChannel();
    await cc.checkQueue(q);
    await c.close();
  });

  await s.run('close_clean', async () => {
    const c = await amqp.connect(URL);
    const errors = [];
    c.on('error', (e) => errors.push(e));
    const c1 = await c.createChannel();
    await c1.close();
    const c2 = await c.createChannel();
    await c2.checkQueue(q);
    await c.close();
    check(errors.length === 0, `errors ${errors}`);
  });

  await s.run('consumer_cancel_notify', async () => {
    const tmp = unique('al-cancel');
    const c = await conn.createChannel();
    await c.assertQueue(tmp);
    let cancelled = false;
    await c.consume(tmp, (m) => { if (m === null) cancelled = true; });
    await ch.deleteQueue(tmp);
    await waitFor(() => cancelled, 5000, 'basic.cancel from the broker');
    await c.close();
  });

  await s.run('large_message', async () => {
    const body = Buffer.concat([Buffer.alloc(1 << 20, 7), Buffer.from('end')]);
    ch.publish(ex, 'rk', body);
    const m = await getOne(ch, q, { noAck: true });
    check(m.content.equals(body), `${m.content.length} bytes back of ${body.length}`);
  });

  await s.run('channel_error_recovery', async () => {
    const c = await conn.createChannel();
    c.on('error', () => {});
    let code = null;
    try {
      await c.checkQueue(unique('al-missing'));
    } catch (e) {
      code = e.code;
    }
    check(code === 404, `reply code ${code}, want 404 NOT_FOUND`);
    const c2 = await conn.createChannel();
    await c2.checkQueue(q);
    await c2.close();
  });

  await s.run('direct_reply_to', async () => {
    // The RPC pattern of amqplib's tutorials: replies through amq.rabbitmq.reply-to.
    const rq = unique('al-rpc');
    const srv = await conn.createChannel();
    await srv.assertQueue(rq, { durable: false });
    await srv.consume(rq, (m) => {
      if (m === null) return; // cancelled by the broker when the queue is deleted below
      srv.sendToQueue(m.properties.replyTo, Buffer.from(m.content.toString().toUpperCase()),
        { correlationId: m.properties.correlationId });
      srv.ack(m);
    });
    const cl = await conn.createChannel();
    const replies = [];
    await cl.consume('amq.rabbitmq.reply-to',
      (m) => replies.push(`${m.properties.correlationId}:${m.content}`), { noAck: true });
    for (let i = 0; i < 3; i++) {
      cl.sendToQueue(rq, Buffer.from(`ping${i}`),
        { replyTo: 'amq.rabbitmq.reply-to', correlationId: `r${i}` });
    }
    await waitFor(() => replies.length === 3, 5000, '3 direct replies');
    check(replies.sort().join(',') === 'r0:PING0,r1:PING1,r2:PING2', `replies ${replies}`);
    await cl.close();
    await srv.deleteQueue(rq);
    await srv.close();
  });

  await s.run('quorum_queue', async () => {
    const qq = unique('al-qq');
    await ch.assertQueue(qq, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
    ch.sendToQueue(qq, Buffer.from('q1'));
    const m = await getOne(ch, qq);
    ch.nack(m, false, true);
    const again = await getOne(ch, qq, { noAck: true });
    check(again.fields.redelivered, 'redelivered flag');
    check(again.properties.headers['x-delivery-count'] === 1,
      `x-delivery-count ${JSON.stringify(again.properties.headers)}`);
    await ch.deleteQueue(qq);
  });

  await ch.deleteQueue(q);
  await ch.deleteExchange(ex);
  await conn.close();
}

main().catch((e) => {
  console.log(`FAIL amqplib setup: ${e}`);
  s.failed += 1;
}).finally(() => s.finish());
