'use strict';
// mqtrace's test application over Apache's Node.js 5.x client (rocketmq-client-nodejs, gRPC
// through the proxy), with the flags and output of the Go application (tests/go/grpc):
//   node mq-grpc5.js produce --endpoint H:P --topic T --count N [--tls]
//   node mq-grpc5.js consume --endpoint H:P --topic T --group G --expect N [--tls]
//                            [--timeout-s S]
// One JSON line per message on stdout ({"msgId",...}; a consumer's carry "action":"ack"),
// {"done":true} last; errors on stderr, exit 1, nothing on stdout after a fatal error.
// --tls: TLS to the proxy as the Java and Go clients do it by default, the server's
// certificate not verified (the client verifies it, and the test proxy's is self-signed).

const grpc = require('@grpc/grpc-js');

const createSsl = grpc.ChannelCredentials.createSsl.bind(grpc.ChannelCredentials);
grpc.ChannelCredentials.createSsl = (rootCerts, privateKey, certChain, verifyOptions) =>
  createSsl(rootCerts, privateKey, certChain, { ...verifyOptions, rejectUnauthorized: false });

const { Producer, SimpleConsumer } = require('rocketmq-client-nodejs');

const USAGE = 'usage: mq-grpc5.js produce|consume --endpoint H:P --topic T [--group G] ' +
  '[--count N] [--expect N] [--timeout-s S] [--tls]';

function parse(argv) {
  const [command, ...rest] = argv;
  const flags = {};
  for (let i = 0; i < rest.length; i++) {
    if (!rest[i].startsWith('--')) fatal(`bad argument ${rest[i]}; ${USAGE}`);
    const name = rest[i].slice(2);
    if (name === 'tls') {
      flags.tls = true;
      continue;
    }
    if (rest[i + 1] === undefined) fatal(`--${name} needs a value; ${USAGE}`);
    flags[name] = rest[++i];
  }
  for (const required of ['endpoint', 'topic']) {
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
  process.stderr.write(`mq-grpc5: error: ${message}\n`);
  process.exit(1);
}
const nullable = value => (value === undefined || value === '' ? null : value);

async function produce(flags) {
  const count = Number(flags.count || 1);
  const producer = new Producer({ endpoints: flags.endpoint, sslEnabled: flags.tls === true });
  await producer.startup();
  for (let i = 0; i < count; i++) {
    const receipt = await producer.send({
      topic: flags.topic,
      tag: 'TagA',
      keys: [`key-${i}`],
      body: Buffer.from(`mqtrace node 5.x message ${i}`),
    });
    emit({ msgId: receipt.messageId, topic: flags.topic, offset: receipt.offset, status: 'SEND_OK',
      tag: 'TagA', keys: `key-${i}` });
  }
  emit({ done: true });
  await producer.shutdown();
}

async function consume(flags) {
  if (!flags.group) fatal(`--group is required; ${USAGE}`);
  const expect = Number(flags.expect || 1);
  const timeout = Number(flags['timeout-s'] || 60);
  const consumer = new SimpleConsumer({
    endpoints: flags.endpoint,
    consumerGroup: flags.group,
    subscriptions: new Map().set(flags.topic, '*'),
    awaitDuration: 5000,
    sslEnabled: flags.tls === true,
  });
  await consumer.startup();
  const acked = new Set();
  const watchdog = setTimeout(() => fatal(`timeout after ${timeout}s: ${acked.size} of ` +
    `${expect} messages received and acked from ${flags.topic} (group ${flags.group})`),
  timeout * 1000);
  while (acked.size < expect) {
    let messages;
    try {
      messages = await consumer.receive(16, 20000);
    } catch (error) {
      process.stderr.write(`mq-grpc5: warning: receive: ${error}\n`);
      await new Promise(resolve => setTimeout(resolve, 500));
      continue;
    }
    for (const message of messages) {
      // Done already: the rest come back after their invisible time; nothing more printed.
      if (acked.size >= expect) continue;
      await consumer.ack(message);
      acked.add(message.messageId);
      emit({
        msgId: message.messageId,
        deliveryAttempt: message.deliveryAttempt,
        topic: message.topic,
        offset: message.offset,
        tag: nullable(message.tag),
        keys: nullable(message.keys.join(' ')),
        action: 'ack',
      });
    }
  }
  clearTimeout(watchdog);
  emit({ done: true });
  await consumer.shutdown();
}

const { command, flags } = parse(process.argv.slice(2));
const run = { produce, consume }[command];
if (!run) fatal(USAGE);
run(flags).then(() => process.exit(0), error => fatal(error && error.stack || String(error)));
