package mqtrace.apps;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

import org.apache.rocketmq.client.producer.DefaultMQProducer;
import org.apache.rocketmq.client.producer.LocalTransactionState;
import org.apache.rocketmq.client.producer.MessageQueueSelector;
import org.apache.rocketmq.client.producer.SendCallback;
import org.apache.rocketmq.client.producer.SendResult;
import org.apache.rocketmq.client.producer.TransactionListener;
import org.apache.rocketmq.client.producer.TransactionMQProducer;
import org.apache.rocketmq.client.producer.TransactionSendResult;
import org.apache.rocketmq.common.message.Message;
import org.apache.rocketmq.common.message.MessageClientIDSetter;
import org.apache.rocketmq.common.message.MessageExt;
import org.apache.rocketmq.common.message.MessageQueue;

/**
 * Remoting-protocol producer. Uses only API present in rocketmq-client 4.9.7 and 5.x.
 * See README.md for flags and output.
 */
public final class RemotingProducer {
    static final String USAGE = "RemotingProducer --namesrv H:P --topic T --group G --count N "
            + "--mode sync|async|oneway|batch|ordered|delay|transaction [--tag TAG] [--keys K] [--trace] "
            + "[--delay-level L] [--batch-size B] [--body-size S] [--rate PER_SEC] [--timeout-s S] [--api-timeout-ms MS] "
            + "[--send-timeout-ms MS] [--trace-flush-ms MS] [--stats]";

    private static final List<String> MODES =
            Arrays.asList("sync", "async", "oneway", "batch", "ordered", "delay", "transaction");

    public static void main(String[] argv) {
        Out.init("RemotingProducer");
        Args a = Args.parse(argv, USAGE,
                new String[] {"api-timeout-ms", "namesrv", "topic", "group", "count", "mode", "tag", "keys", "delay-level",
                    "batch-size", "body-size", "rate", "timeout-s", "send-timeout-ms", "trace-flush-ms"},
                new String[] {"trace", "stats"});
        try {
            new RemotingProducer(a).run();
        } catch (Throwable t) {
            Out.fail(1, "failed: " + t, t);
        }
    }

    private final Args a;
    private final String namesrv;
    private final String topic;
    private final String group;
    private final int count;
    private final String mode;
    private final String tag;
    private final String keysFlag;
    private final boolean trace;
    private final int delayLevel;
    private final int batchSize;
    private final int bodySize;
    private final double rate;
    private final int timeoutS;
    /** --stats (sync mode): no line per message; the done line says the rate and latencies. */
    private final boolean stats;
    private long[] latenciesNs = new long[0];

    private final AtomicInteger sent = new AtomicInteger();
    private final AtomicInteger failed = new AtomicInteger();
    /** transaction mode: uniq ids left UNKNOW by the local transaction, and the ones checked back. */
    private final Set<String> unknown = ConcurrentHashMap.newKeySet();
    private final Map<String, Integer> checked = new ConcurrentHashMap<String, Integer>();
    private final AtomicInteger checkCalls = new AtomicInteger();

    RemotingProducer(Args a) {
        this.a = a;
        namesrv = a.required("namesrv");
        topic = a.required("topic");
        group = a.required("group");
        count = a.integer("count", 1);
        mode = a.str("mode", "sync");
        if (!MODES.contains(mode)) {
            a.usageError("--mode must be one of " + MODES);
        }
        tag = a.str("tag", "TagA");
        keysFlag = a.str("keys", null);
        trace = a.has("trace");
        delayLevel = a.integer("delay-level", 1);
        batchSize = Math.max(1, a.integer("batch-size", 10));
        bodySize = a.integer("body-size", -1);
        rate = a.number("rate", 0);
        timeoutS = a.integer("timeout-s", 120);
        stats = a.has("stats");
    }

    private String keysOf(int i) {
        return keysFlag != null ? keysFlag : "key-" + i;
    }

    private byte[] body(int i) {
        String text = "mqtrace " + mode + " message " + i;
        if (bodySize < 0) {
            return text.getBytes(StandardCharsets.UTF_8);
        }
        byte[] b = new byte[bodySize];
        byte[] t = text.getBytes(StandardCharsets.UTF_8);
        for (int k = 0; k < bodySize; k++) {
            b[k] = k < t.length ? t[k] : (byte) ('a' + (k % 26));
        }
        return b;
    }

    private Message message(int i) {
        Message m = new Message(topic, tag, keysOf(i), body(i));
        m.putUserProperty("mqtrace_index", String.valueOf(i));
        if (mode.equals("delay")) {
            m.setDelayTimeLevel(delayLevel);
        }
        return m;
    }

    private void pace(long start, int i) throws InterruptedException {
        if (rate <= 0) {
            return;
        }
        long due = start + (long) (i * 1000.0 / rate);
        long now = System.currentTimeMillis();
        if (due > now) {
            Thread.sleep(due - now);
        }
    }

    private void printResult(int i, Message m, SendResult r, String msgId, String offsetMsgId) {
        printResult(i, m, r, msgId, offsetMsgId, 0);
    }

    /** batchIndex: position in a batch (the SendResult's queueOffset is the batch's first). */
    private void printResult(int i, Message m, SendResult r, String msgId, String offsetMsgId, int batchIndex) {
        Out.Obj o = Out.obj()
                .put("msgId", msgId)
                .put("offsetMsgId", offsetMsgId)
                .put("status", r.getSendStatus() == null ? null : r.getSendStatus().name())
                .put("queueId", r.getMessageQueue() == null ? null : r.getMessageQueue().getQueueId())
                .put("brokerName", r.getMessageQueue() == null ? null : r.getMessageQueue().getBrokerName())
                .put("queueOffset", r.getQueueOffset() + batchIndex)
                .put("topic", topic)
                .put("tag", tag)
                .put("keys", keysOf(i))
                .put("mode", mode)
                .put("index", i)
                .put("ts", System.currentTimeMillis());
        if (r instanceof TransactionSendResult) {
            TransactionSendResult tr = (TransactionSendResult) r;
            o.put("localTransactionState",
                    tr.getLocalTransactionState() == null ? null : tr.getLocalTransactionState().name());
            o.put("transactionId", r.getTransactionId());
        }
        if (mode.equals("ordered")) {
            o.put("orderKey", i % 4);
        }
        if (mode.equals("delay")) {
            o.put("delayLevel", delayLevel);
        }
        Out.emit(o);
    }

    void run() throws Exception {
        DefaultMQProducer producer;
        if (mode.equals("transaction")) {
            // (namespace, group, rpcHook, enableMsgTrace, customizedTraceTopic): in 4.9.7 and 5.x.
            TransactionMQProducer tp = new TransactionMQProducer(null, group, null, trace, null);
            tp.setTransactionListener(new TransactionListener() {
                @Override
                public LocalTransactionState executeLocalTransaction(Message msg, Object arg) {
                    int i = (Integer) arg;
                    if (i % 3 == 2) {
                        unknown.add(MessageClientIDSetter.getUniqID(msg));
                        return LocalTransactionState.UNKNOW;
                    }
                    return LocalTransactionState.COMMIT_MESSAGE;
                }

                @Override
                public LocalTransactionState checkLocalTransaction(MessageExt msg) {
                    String id = MessageClientIDSetter.getUniqID(msg);
                    if (id == null) {
                        id = msg.getTransactionId();
                    }
                    int n = checkCalls.incrementAndGet();
                    int times = checked.merge(id, 1, Integer::sum);
                    Out.emit(Out.obj()
                            .put("checked", id)
                            .put("offsetMsgId", msg.getMsgId())
                            .put("transactionId", msg.getTransactionId())
                            .put("topic", msg.getTopic())
                            .put("queueOffset", msg.getQueueOffset())
                            .put("checkTimes", times)
                            .put("checkCall", n)
                            .put("ts", System.currentTimeMillis())
                            .put("result", "COMMIT_MESSAGE"));
                    return LocalTransactionState.COMMIT_MESSAGE;
                }
            });
            producer = tp;
        } else {
            // (group, enableMsgTrace, customizedTraceTopic): in 4.9.7 and 5.x.
            producer = new DefaultMQProducer(group, trace, null);
        }
        producer.setNamesrvAddr(namesrv);
        producer.setInstanceName("mqtrace-" + Args.instanceSuffix());
        // timeout of the client's calls to the name server / broker admin API (route lookups);
        // client default 3 s is too short on a loaded 2-core test machine
        producer.setMqClientApiTimeout(a.integer("api-timeout-ms", 10000));
        producer.setSendMsgTimeout(a.integer("send-timeout-ms", 10000));
        producer.setRetryTimesWhenSendFailed(2);
        producer.start();
        long t0 = System.currentTimeMillis();
        try {
            send(producer, t0);
            if (mode.equals("transaction")) {
                waitCheckBacks(t0);
            }
            if (trace) {
                // Trace records are sent by a background dispatcher in batches; give it time.
                Thread.sleep(a.integer("trace-flush-ms", 2000));
            }
        } finally {
            producer.shutdown();
        }
        Out.Obj done = Out.obj().put("done", true).put("mode", mode).put("sent", sent.get())
                .put("failed", failed.get()).put("elapsedMs", System.currentTimeMillis() - t0);
        if (mode.equals("transaction")) {
            done.put("unknown", unknown.size()).put("checked", checked.size()).put("checkCalls", checkCalls.get());
        }
        if (stats && latenciesNs.length > 0) {
            long elapsedNs = 0;
            for (long l : latenciesNs) {
                elapsedNs += l;
            }
            long[] sorted = latenciesNs.clone();
            Arrays.sort(sorted);
            done.put("msgsPerS", latenciesNs.length * 1e9 / elapsedNs)
                    .put("p50Us", sorted[sorted.length / 2] / 1000.0)
                    .put("p99Us", sorted[(int) (sorted.length * 0.99)] / 1000.0);
        }
        Out.emit(done);
        Out.exit(failed.get() == 0 ? 0 : 1);
    }

    private void send(DefaultMQProducer producer, long t0) throws Exception {
        switch (mode) {
            case "sync":
            case "delay":
                latenciesNs = new long[count];
                for (int i = 0; i < count; i++) {
                    pace(t0, i);
                    Message m = message(i);
                    long started = System.nanoTime();
                    SendResult r = producer.send(m);
                    latenciesNs[i] = System.nanoTime() - started;
                    sent.incrementAndGet();
                    if (!stats) {
                        printResult(i, m, r, r.getMsgId(), r.getOffsetMsgId());
                    }
                }
                break;
            case "ordered":
                MessageQueueSelector selector = new MessageQueueSelector() {
                    @Override
                    public MessageQueue select(List<MessageQueue> mqs, Message msg, Object arg) {
                        int h = arg.hashCode() & Integer.MAX_VALUE;
                        return mqs.get(h % mqs.size());
                    }
                };
                for (int i = 0; i < count; i++) {
                    pace(t0, i);
                    Message m = message(i);
                    SendResult r = producer.send(m, selector, Integer.valueOf(i % 4));
                    sent.incrementAndGet();
                    printResult(i, m, r, r.getMsgId(), r.getOffsetMsgId());
                }
                break;
            case "oneway":
                for (int i = 0; i < count; i++) {
                    pace(t0, i);
                    Message m = message(i);
                    producer.sendOneway(m);
                    sent.incrementAndGet();
                    Out.emit(Out.obj()
                            .put("msgId", MessageClientIDSetter.getUniqID(m))
                            .put("topic", topic)
                            .put("tag", tag)
                            .put("keys", keysOf(i))
                            .put("mode", mode)
                            .put("index", i));
                }
                break;
            case "async":
                sendAsync(producer, t0);
                break;
            case "batch":
                for (int start = 0; start < count; start += batchSize) {
                    pace(t0, start);
                    List<Message> batch = new ArrayList<Message>();
                    for (int i = start; i < Math.min(count, start + batchSize); i++) {
                        batch.add(message(i));
                    }
                    SendResult r = producer.send(batch);
                    String[] ids = r.getMsgId() == null ? new String[0] : r.getMsgId().split(",");
                    String[] offs = r.getOffsetMsgId() == null ? new String[0] : r.getOffsetMsgId().split(",");
                    for (int k = 0; k < batch.size(); k++) {
                        String id = k < ids.length ? ids[k] : MessageClientIDSetter.getUniqID(batch.get(k));
                        String off = k < offs.length ? offs[k] : null;
                        sent.incrementAndGet();
                        printResult(start + k, batch.get(k), r, id, off, k);
                    }
                }
                break;
            case "transaction":
                for (int i = 0; i < count; i++) {
                    pace(t0, i);
                    Message m = message(i);
                    SendResult r = ((TransactionMQProducer) producer).sendMessageInTransaction(m, Integer.valueOf(i));
                    sent.incrementAndGet();
                    printResult(i, m, r, r.getMsgId(), r.getOffsetMsgId());
                }
                break;
            default:
                throw new IllegalStateException(mode);
        }
    }

    private void sendAsync(DefaultMQProducer producer, long t0) throws Exception {
        final CountDownLatch latch = new CountDownLatch(count);
        for (int i = 0; i < count; i++) {
            pace(t0, i);
            final int idx = i;
            final Message m = message(i);
            producer.send(m, new SendCallback() {
                @Override
                public void onSuccess(SendResult r) {
                    sent.incrementAndGet();
                    printResult(idx, m, r, r.getMsgId(), r.getOffsetMsgId());
                    latch.countDown();
                }

                @Override
                public void onException(Throwable e) {
                    failed.incrementAndGet();
                    Out.log("async send of message " + idx + " failed: " + e);
                    Out.emit(Out.obj().put("msgId", MessageClientIDSetter.getUniqID(m)).put("status", "FAILED")
                            .put("error", String.valueOf(e)).put("mode", mode).put("index", idx));
                    latch.countDown();
                }
            });
        }
        if (!latch.await(timeoutS, TimeUnit.SECONDS)) {
            Out.fail(2, "timeout: " + latch.getCount() + " async sends not completed after " + timeoutS + " s", null);
        }
    }

    private void waitCheckBacks(long t0) throws InterruptedException {
        long deadline = t0 + timeoutS * 1000L;
        while (!checked.keySet().containsAll(unknown)) {
            if (System.currentTimeMillis() > deadline) {
                Set<String> missing = ConcurrentHashMap.newKeySet();
                missing.addAll(unknown);
                missing.removeAll(checked.keySet());
                Out.fail(2, "timeout after " + timeoutS + " s: no transaction check-back for " + missing.size()
                        + " of " + unknown.size() + " UNKNOW messages: " + missing
                        + " (broker options transactionCheckInterval / transactionTimeOut decide when it checks)",
                        null);
            }
            Thread.sleep(100);
        }
    }
}
