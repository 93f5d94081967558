'use strict';
// mqtrace's test application over ali-ons (RocketMQ remoting, pure JavaScript).
//   node mq-ali-ons.js produce --namesrv H:P --topic T --group G --count N
//   node mq-ali-ons.js consume --namesrv H:P --topic T --group G --expect N [--fail-first K]
//                              [--timeout-s S] [--linger-ms MS]
// Output contract (as the Java and Go applications): one JSON line per message on stdout, a
// consumer's {"ready":true} once subscribed, {"done":true} last; errors on stderr, exit 1, and
// nothing on stdout after a fatal error. ali-ons sets no UNIQ_KEY: the producer prints the id the
// broker answered (offsetMsgId form); the consumer prints the UNIQ_KEY a 5.x broker adds when it
// stores the message (else that offsetMsgId) and, on a first delivery, the offsetMsgId beside it.

const { Producer, Consumer, Message } = require('ali-ons');

const USAGE = 'usage: mq-ali-ons.js produce|consume --namesrv H:P --topic T --group G ' +
  '[--count N] [--expect N] [--fail-first K] [--timeout-s S] [--linger-ms MS]';

function parse(argv) {
  const [command, ...rest] = argv;
  const flags = {};
  for (let i = 0; i < rest.length; i += 2) {
    if (!rest[i].startsWith('--') || rest[i + 1] === undefined) fatal(`bad argument ${rest[i]}; ${USAGE}`);
    flags[rest[i].slice(2)] = rest[i + 1];
  }
  for (const required of ['namesrv', 'topic', 'group']) {
    if (!flags[required]) fatal(`--${required} is required; ${USAGE}`);
  }
  return { command, flags };
}

let failed = false;
function emit(line) {
  if (!failed) process.stdout.write(JSON.stringify(line) + '\n');
}
function fatal(message) {
  failed = true;
  process.stderr.write(`mq-ali-ons: error: ${message}\n`);
  process.exit(1);
}
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));
// Quiet: the client's own log lines would mix with the JSON lines.
const logger = { info() {}, debug() {}, warn() {}, error: e => process.stderr.write(`${e}\n`) };
// ali-ons asks an HTTP client for Aliyun's name server address only; a name server given here.
const httpclient = {};

async function produce(flags) {
  const count = Number(flags.count || 1);
  const producer = new Producer({ httpclient, logger, nameSrv: flags.namesrv, producerGroup: flags.group });
  await producer.ready();
  for (let i = 0; i < count; i++) {
    const message = new Message(flags.topic, 'TagA', `mqtrace ali-ons message ${i}`);
    message.keys = [`key-${i}`];
    const result = await producer.send(message);
    if (result.sendStatus !== 'SEND_OK') fatal(`send ${i}: ${result.sendStatus}`);
    emit({
      msgId: result.msgId,
      topic: flags.topic,
      queueId: Number(result.messageQueue.queueId),
      queueOffset: Number(result.queueOffset),
      status: result.sendStatus,
      tag: 'TagA',
      keys: `key-${i}`,
    });
  }
  await producer.close();
  emit({ done: true });
}

async function consume(flags) {
  const expect = Number(flags.expect || 1);
  const failFirst = Number(flags['fail-first'] || 0);
  const deliveries = new Map();
  const succeeded = new Set();
  let finish;
  const finished = new Promise(resolve => { finish = resolve; });
  const consumer = new Consumer({
    httpclient,
    logger,
    nameSrv: flags.namesrv,
    consumerGroup: flags.group,
    consumeFromWhere: 'CONSUME_FROM_FIRST_OFFSET',
  });
  consumer.on('error', e => process.stderr.write(`mq-ali-ons: consumer: ${e.message}\n`));
  consumer.subscribe(flags.topic, '*', async msg => {
    // A redelivery is a new message on the retry topic: its origin's id is kept in a property.
    const id = msg.properties.UNIQ_KEY || msg.originMessageId || msg.msgId;
    const n = (deliveries.get(id) || 0) + 1;
    deliveries.set(id, n);
    const fail = n <= failFirst;
    if (!fail) succeeded.add(id);
    emit({
      msgId: id,
      // The id the producer was answered, on a first delivery (a redelivery is a new message).
      offsetMsgId: msg.reconsumeTimes === 0 ? msg.msgId : null,
      topic: msg.topic,
      reconsumeTimes: msg.reconsumeTimes,
      queueId: Number(msg.queueId),
      queueOffset: Number(msg.queueOffset),
      tag: msg.tags,
      keys: msg.keys,
      result: fail ? 'RECONSUME_LATER' : 'CONSUME_SUCCESS',
    });
    if (succeeded.size >= expect) finish();
    return fail ? Consumer.ACTION_RETRY : undefined;
  });
  await consumer.ready();
  emit({ ready: true });
  const timeoutS = Number(flags['timeout-s'] || 60);
  const timer = setTimeout(() => fatal(`timeout after ${timeoutS}s: ${succeeded.size} of ${expect} consumed`), timeoutS * 1000);
  await finished;
  clearTimeout(timer);
  emit({ done: true });
  failed = true; // nothing after the done line
  await sleep(Number(flags['linger-ms'] || 0));
  await consumer.close(); // persists the consumed offsets
}

const { command, flags } = parse(process.argv.slice(2));
const run = { produce, consume }[command];
if (!run) fatal(USAGE);
run(flags).then(() => process.exit(0), e => fatal(e.stack || String(e)));
