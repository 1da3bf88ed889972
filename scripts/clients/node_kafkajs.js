// kafkajs against Portask: admin, keyed produce with acks=all and compression (gzip built
// in; snappy and lz4 through kafkajs-snappy / kafkajs-lz4), headers, idempotence, consume
// from the beginning, a two-member group with commits and a rebalance, group
// listing/description, topic offsets (earliest/latest/by time), topic deletion.
// Usage: node node_kafkajs.js BOOTSTRAP
'use strict';

const { Kafka, CompressionTypes, CompressionCodecs, logLevel } = require('kafkajs');
const { Scenarios, Skip, check, sleep, waitFor, unique } = require('./scenario');

const s = new Scenarios('kafkajs');
let codecs = '';
try {
  CompressionCodecs[CompressionTypes.Snappy] = require('kafkajs-snappy');
  const LZ4 = require('kafkajs-lz4');
  CompressionCodecs[CompressionTypes.LZ4] = new LZ4().codec;
  codecs = 'snappy,lz4';
} catch (e) {
  codecs = `codecs missing: ${e.message}`;
}

const kafka = new Kafka({
  clientId: 'compat-kafkajs',
  brokers: [process.argv[2]],
  logLevel: process.env.COMPAT_VERBOSE ? logLevel.INFO : logLevel.NOTHING,
  retry: { retries: 5 },
});
const admin = kafka.admin();
const topic = unique('kj');
const records = []; // {key, value, headers}

async function produce({ compression = CompressionTypes.None, n = 20, headers = false, idempotent = false, label = 'none' } = {}) {
  const p = kafka.producer(idempotent ? { idempotent: true, maxInFlightRequests: 1 } : {});
  await p.connect();
  const messages = [];
  for (let i = 0; i < n; i++) {
    const m = { key: `key-${i % 4}`, value: `${label}-${i}-${'z'.repeat(200)}` };
    if (headers) m.headers = { trace: `t${i}`, n: String(i) };
    messages.push(m);
  }
  let res;
  try {
    res = await p.send({ topic, acks: -1, compression, messages });
  } finally {
    await p.disconnect();
  }
  check(res.every((r) => r.errorCode === 0), `produce errors ${JSON.stringify(res)}`);
  records.push(...messages);
  return `${n} records`;
}

async function consumeAll(expect) {
  const c = kafka.consumer({ groupId: unique('kj-reader') });
  await c.connect();
  await c.subscribe({ topic, fromBeginning: true });
  const got = [];
  await c.run({ autoCommit: false, eachMessage: async ({ message }) => { got.push(message); } });
  try {
    await waitFor(() => got.length >= expect, 30000, `${expect} records`);
  } finally {
    await c.disconnect();
  }
  return got;
}

async function main() {
  await admin.connect();

  await s.run('create_topic', async () => {
    const created = await admin.createTopics({ topics: [{ topic, numPartitions: 2 }], waitForLeaders: true });
    check(created === true, 'createTopics returned false');
    check((await admin.listTopics()).includes(topic), 'topic not listed');
  });

  await s.run('produce_keyed_acks_all', () => produce());
  for (const [name, type] of [['gzip', CompressionTypes.GZIP], ['snappy', CompressionTypes.Snappy], ['lz4', CompressionTypes.LZ4], ['zstd', CompressionTypes.ZSTD]]) {
    await s.run(`compression_${name}`, async () => {
      try {
        return await produce({ compression: type, label: name });
      } catch (e) {
        // kafkajs ships gzip only; zstd needs a native codec package that does not build here.
        if (e.name === 'KafkaJSNotImplemented') throw new Skip(`no ${name} codec for kafkajs here (have ${codecs})`);
        throw e;
      }
    });
  }
  await s.run('headers', async () => {
    await produce({ n: 5, headers: true, label: 'hdr' });
    const got = await consumeAll(records.length);
    const byValue = new Map(got.map((m) => [m.value.toString(), m]));
    for (const r of records.slice(-5)) {
      const m = byValue.get(r.value);
      check(m, 'record with headers not consumed');
      check(m.headers.trace.toString() === r.headers.trace && m.headers.n.toString() === r.headers.n,
        `headers ${JSON.stringify(m.headers)}`);
    }
  });
  await s.run('idempotent_producer', () => produce({ n: 50, idempotent: true, label: 'idem' }));
  await s.run('consume_from_beginning', async () => {
    const got = await consumeAll(records.length);
    await sleep(500);
    check(got.length === records.length, `consumed ${got.length} of ${records.length}`);
    const a = got.map((m) => `${m.key}:${m.value}`).sort();
    const b = records.map((m) => `${m.key}:${m.value}`).sort();
    check(JSON.stringify(a) === JSON.stringify(b), 'consumed records differ');
    return `${got.length} records`;
  });

  const groupId = unique('kj-group');
  const members = {};
  const member = async (name) => {
    const st = { seen: 0, assigned: [], consumer: kafka.consumer({ groupId, heartbeatInterval: 500, sessionTimeout: 10000 }) };
    const c = st.consumer;
    c.on(c.events.GROUP_JOIN, (e) => {
      st.assigned = (e.payload.memberAssignment[topic] || []).slice().sort();
    });
    await c.connect();
    await c.subscribe({ topic, fromBeginning: true });
    await c.run({
      autoCommit: false,
      eachMessage: async ({ partition, message }) => {
        st.seen += 1;
        await c.commitOffsets([{ topic, partition, offset: (BigInt(message.offset) + 1n).toString() }]);
      },
    });
    members[name] = st;
  };
  const committed = async () => {
    const offs = await admin.fetchOffsets({ groupId, topics: [topic] });
    return offs[0].partitions.reduce((n, p) => n + Math.max(0, Number(p.offset)), 0);
  };

  await s.run('group_two_members_commit', async () => {
    await Promise.all([member('a'), member('b')]);
    await waitFor(() => members.a.assigned.length === 1 && members.b.assigned.length === 1
      && members.a.assigned[0] !== members.b.assigned[0], 30000, 'one partition each');
    await waitFor(() => members.a.seen + members.b.seen >= records.length, 30000, 'everything consumed');
    await waitFor(async () => (await committed()) >= records.length, 15000, 'commits');
    return `a=${members.a.assigned} b=${members.b.assigned}`;
  });

  await s.run('rebalance_on_leave', async () => {
    check(members.b, 'no second member');
    await members.b.consumer.disconnect();
    await waitFor(() => members.a.assigned.length === 2, 30000, 'the remaining member owns both partitions');
  });

  await s.run('list_describe_groups', async () => {
    const { groups } = await admin.listGroups();
    check(groups.some((g) => g.groupId === groupId), `group not listed: ${JSON.stringify(groups)}`);
    const { groups: [d] } = await admin.describeGroups([groupId]);
    check(d.state === 'Stable', `state ${d.state}`);
    check(d.members.length === 1, `${d.members.length} members`);
    if (members.a) await members.a.consumer.disconnect();
  });

  await s.run('list_offsets', async () => {
    const offs = await admin.fetchTopicOffsets(topic);
    check(offs.every((p) => p.low === '0'), `earliest ${JSON.stringify(offs)}`);
    const total = offs.reduce((n, p) => n + Number(p.high), 0);
    check(total === records.length, `latest ${total} for ${records.length} records`);
    const atZero = await admin.fetchTopicOffsetsByTimestamp(topic, 0);
    check(atZero.every((p) => p.offset === '0'), `by time 0: ${JSON.stringify(atZero)}`);
    const future = await admin.fetchTopicOffsetsByTimestamp(topic, Date.now() + 3600000);
    // A timestamp past every record finds no offset (-1); kafkajs then reports the end.
    check(future.every((p) => p.offset === '-1' || Number(p.offset) === Number(offs.find((o) => o.partition === p.partition).high)),
      `future: ${JSON.stringify(future)}`);
    return `latest ${offs.map((p) => p.high)}`;
  });

  await s.run('configs_and_partitions', async () => {
    const { ConfigResourceTypes } = require('kafkajs');
    await admin.alterConfigs({
      validateOnly: false,
      resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configEntries: [{ name: 'retention.ms', value: '86400000' }] }],
    });
    const d = await admin.describeConfigs({
      includeSynonyms: false,
      resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configNames: ['retention.ms'] }],
    });
    const e = d.resources[0].configEntries.find((c) => c.configName === 'retention.ms');
    check(e && e.configValue === '86400000', `retention.ms ${JSON.stringify(e)}`);
    await admin.createPartitions({ topicPartitions: [{ topic, count: 3 }] });
    const md = await admin.fetchTopicMetadata({ topics: [topic] });
    check(md.topics[0].partitions.length === 3, `${md.topics[0].partitions.length} partitions`);
  });

  await s.run('delete_groups', async () => {
    const res = await admin.deleteGroups([groupId]);
    check(res[0].errorCode === 0, `deleteGroups ${JSON.stringify(res)}`);
    const { groups } = await admin.listGroups();
    check(!groups.some((g) => g.groupId === groupId), 'deleted group still listed');
  });

  await s.run('delete_topic', async () => {
    await admin.deleteTopics({ topics: [topic] });
    await waitFor(async () => !(await admin.listTopics()).includes(topic), 10000, 'topic gone');
  });
  await admin.disconnect();
}

main().catch((e) => {
  console.log(`FAIL kafkajs setup: ${e}`);
  s.failed += 1;
}).finally(() => s.finish());
