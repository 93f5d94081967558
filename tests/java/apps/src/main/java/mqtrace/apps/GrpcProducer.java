package mqtrace.apps;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;

import org.apache.rocketmq.client.apis.ClientServiceProvider;
import org.apache.rocketmq.client.apis.message.Message;
import org.apache.rocketmq.client.apis.message.MessageBuilder;
import org.apache.rocketmq.client.apis.message.MessageView;
import org.apache.rocketmq.client.apis.producer.Producer;
import org.apache.rocketmq.client.apis.producer.ProducerBuilder;
import org.apache.rocketmq.client.apis.producer.SendReceipt;
import org.apache.rocketmq.client.apis.producer.Transaction;
import org.apache.rocketmq.client.apis.producer.TransactionChecker;
import org.apache.rocketmq.client.apis.producer.TransactionResolution;

/** gRPC (rocketmq-client-java 5.x) producer. See README.md. */
public final class GrpcProducer {
    static final String USAGE = "GrpcProducer --endpoint H:P --topic T --count N --mode normal|fifo|delay|transaction "
            + "[--tag TAG] [--keys K] [--tls] [--delay-ms MS] [--body-size S] [--rate PER_SEC] [--timeout-s S] "
            + "[--linger-ms MS]";

    private static final List<String> MODES = Arrays.asList("normal", "fifo", "delay", "transaction");

    public static void main(String[] argv) {
        Out.init("GrpcProducer");
        Args a = Args.parse(argv, USAGE,
                new String[] {"endpoint", "topic", "count", "mode", "tag", "keys", "delay-ms", "body-size", "rate",
                    "timeout-s", "linger-ms", "request-timeout-s"},
                new String[] {"tls"});
        try {
            run(a);
        } catch (Throwable t) {
            Out.fail(1, "failed: " + t, t);
        }
    }

    static void run(Args a) throws Exception {
        final String topic = a.required("topic");
        final int count = a.integer("count", 1);
        final String mode = a.str("mode", "normal");
        if (!MODES.contains(mode)) {
            a.usageError("--mode must be one of " + MODES);
        }
        String tag = a.str("tag", "TagA");
        String keysFlag = a.str("keys", null);
        long delayMs = a.integer("delay-ms", 2000);
        int bodySize = a.integer("body-size", -1);
        double rate = a.number("rate", 0);
        int timeoutS = a.integer("timeout-s", 120);

        final Set<String> unknown = ConcurrentHashMap.newKeySet();
        final Map<String, Integer> checked = new ConcurrentHashMap<String, Integer>();
        final AtomicInteger checkCalls = new AtomicInteger();

        ClientServiceProvider provider = ClientServiceProvider.loadService();
        ProducerBuilder pb = provider.newProducerBuilder()
                .setClientConfiguration(Grpc.config(a))
                .setTopics(topic);
        if (mode.equals("transaction")) {
            pb.setTransactionChecker(new TransactionChecker() {
                @Override
                public TransactionResolution check(MessageView mv) {
                    String id = mv.getMessageId().toString();
                    int times = checked.merge(id, 1, Integer::sum);
                    Out.emit(Out.obj().put("checked", id).put("topic", mv.getTopic())
                            .put("checkTimes", times).put("checkCall", checkCalls.incrementAndGet())
                            .put("ts", System.currentTimeMillis())
                            .put("result", "COMMIT"));
                    return TransactionResolution.COMMIT;
                }
            });
        }
        long t0 = System.currentTimeMillis();
        Producer producer = null;
        try {
            producer = pb.build();
        } catch (IllegalStateException e) {
            Grpc.failStart("producer", e);
        }
        int sent = 0;
        try {
            for (int i = 0; i < count; i++) {
                if (rate > 0) {
                    long due = t0 + (long) (i * 1000.0 / rate);
                    long now = System.currentTimeMillis();
                    if (due > now) {
                        Thread.sleep(due - now);
                    }
                }
                String keys = keysFlag != null ? keysFlag : "key-" + i;
                String text = "mqtrace grpc " + mode + " message " + i;
                byte[] body = text.getBytes(StandardCharsets.UTF_8);
                if (bodySize >= 0) {
                    byte[] b = new byte[bodySize];
                    for (int k = 0; k < bodySize; k++) {
                        b[k] = k < body.length ? body[k] : (byte) ('a' + (k % 26));
                    }
                    body = b;
                }
                MessageBuilder mb = provider.newMessageBuilder().setTopic(topic).setTag(tag).setKeys(keys)
                        .setBody(body).addProperty("mqtrace_index", String.valueOf(i));
                String group = null;
                Long deliveryTs = null;
                if (mode.equals("fifo")) {
                    group = "group-" + (i % 4);
                    mb.setMessageGroup(group);
                } else if (mode.equals("delay")) {
                    deliveryTs = System.currentTimeMillis() + delayMs;
                    mb.setDeliveryTimestamp(deliveryTs);
                }
                Message m = mb.build();
                Out.Obj o;
                if (mode.equals("transaction")) {
                    Transaction tx = producer.beginTransaction();
                    SendReceipt r = producer.send(m, tx);
                    String id = r.getMessageId().toString();
                    o = Out.obj().put("msgId", id);
                    if (i % 3 == 2) {
                        unknown.add(id); // neither commit nor rollback: the broker checks back
                        o.put("transaction", "unknown");
                    } else {
                        tx.commit();
                        o.put("transaction", "commit");
                    }
                } else {
                    SendReceipt r = producer.send(m);
                    o = Out.obj().put("msgId", r.getMessageId().toString());
                }
                sent++;
                o.put("mode", mode).put("topic", topic).put("tag", tag).put("keys", keys).put("index", i)
                        .put("ts", System.currentTimeMillis());
                if (group != null) {
                    o.put("messageGroup", group);
                }
                if (deliveryTs != null) {
                    o.put("deliveryTimestamp", deliveryTs);
                }
                Out.emit(o);
            }
            if (mode.equals("transaction")) {
                long deadline = t0 + timeoutS * 1000L;
                while (!checked.keySet().containsAll(unknown)) {
                    if (System.currentTimeMillis() > deadline) {
                        Out.fail(2, "timeout after " + timeoutS + " s: " + (unknown.size() - checked.size())
                                + " of " + unknown.size() + " open transactions not checked back", null);
                    }
                    Thread.sleep(100);
                }
                // the checker's answer goes out as an EndTransaction request after check() returns
                Thread.sleep(a.integer("linger-ms", 1000));
            }
        } finally {
            producer.close();
        }
        Out.Obj done = Out.obj().put("done", true).put("mode", mode).put("sent", sent)
                .put("elapsedMs", System.currentTimeMillis() - t0);
        if (mode.equals("transaction")) {
            done.put("unknown", unknown.size()).put("checked", checked.size()).put("checkCalls", checkCalls.get());
        }
        Out.emit(done);
        Out.exit(0);
    }
}
