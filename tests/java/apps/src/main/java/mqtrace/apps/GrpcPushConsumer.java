package mqtrace.apps;

import java.util.Collections;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;

import org.apache.rocketmq.client.apis.ClientServiceProvider;
import org.apache.rocketmq.client.apis.consumer.ConsumeResult;
import org.apache.rocketmq.client.apis.consumer.FilterExpression;
import org.apache.rocketmq.client.apis.consumer.MessageListener;
import org.apache.rocketmq.client.apis.consumer.PushConsumer;
import org.apache.rocketmq.client.apis.message.MessageView;

/** gRPC (rocketmq-client-java 5.x) push consumer. */
public final class GrpcPushConsumer {
    static final String USAGE = "GrpcPushConsumer --endpoint H:P --topic T --group G --expect N [--tls] "
            + "[--fail-first K] [--timeout-s S] [--linger-ms MS] [--close-timeout-s S]";

    public static void main(String[] argv) {
        Out.init("GrpcPushConsumer");
        Args a = Args.parse(argv, USAGE,
                new String[] {"endpoint", "topic", "group", "expect", "fail-first", "timeout-s", "linger-ms", "close-timeout-s",
                    "request-timeout-s"},
                new String[] {"tls"});
        try {
            run(a);
        } catch (Throwable t) {
            Out.fail(1, "failed: " + t, t);
        }
    }

    static void run(Args a) throws Exception {
        String topic = a.required("topic");
        String group = a.required("group");
        final int expect = a.integer("expect", 1);
        final int failFirst = a.integer("fail-first", 0);
        int timeoutS = a.integer("timeout-s", 120);
        final Map<String, Integer> deliveries = new ConcurrentHashMap<String, Integer>();
        final Map<String, Boolean> succeeded = new ConcurrentHashMap<String, Boolean>();
        final AtomicInteger total = new AtomicInteger();
        final Object lock = new Object();

        long t0 = System.currentTimeMillis();
        PushConsumer consumer = null;
        try {
            consumer = ClientServiceProvider.loadService().newPushConsumerBuilder()
                .setClientConfiguration(Grpc.config(a))
                .setConsumerGroup(group)
                .setSubscriptionExpressions(Collections.singletonMap(topic, FilterExpression.SUB_ALL))
                .setMessageListener(new MessageListener() {
                    @Override
                    public ConsumeResult consume(MessageView mv) {
                        String id = mv.getMessageId().toString();
                        int n = deliveries.merge(id, 1, Integer::sum);
                        total.incrementAndGet();
                        boolean fail = n <= failFirst;
                        if (!fail) {
                            succeeded.put(id, Boolean.TRUE);
                        }
                        Out.emit(Grpc.view(mv).put("delivery", n).put("result", fail ? "FAILURE" : "SUCCESS"));
                        synchronized (lock) {
                            lock.notifyAll();
                        }
                        return fail ? ConsumeResult.FAILURE : ConsumeResult.SUCCESS;
                    }
                })
                .build();
        } catch (IllegalStateException e) {
            Grpc.failStart("push consumer", e);
        }
        Out.emit(Out.obj().put("ready", true).put("group", group).put("topic", topic)
                .put("startMs", System.currentTimeMillis() - t0));
        long deadline = t0 + timeoutS * 1000L;
        boolean consumed = false;
        long closeMs;
        boolean closed;
        try {
            synchronized (lock) {
                while (succeeded.size() < expect) {
                    long left = deadline - System.currentTimeMillis();
                    if (left <= 0) {
                        break;
                    }
                    lock.wait(Math.min(left, 200));
                }
            }
            consumed = succeeded.size() >= expect;
            if (consumed) {
                // the ack of the last message is sent after consume() returns
                Thread.sleep(a.integer("linger-ms", 1000));
            }
        } finally {
            // close() waits for the in-flight long-polling receive requests (up to the proxy's
            // grpcClientConsumerMaxLongPollingTimeoutMillis, 20 s by default): bound that wait.
            long c0 = System.currentTimeMillis();
            closed = closeWithin(consumer, a.integer("close-timeout-s", 30));
            closeMs = System.currentTimeMillis() - c0;
        }
        if (!consumed) {
            Out.fail(2, "timeout after " + timeoutS + " s: " + succeeded.size() + " of " + expect
                    + " messages consumed", null);
        }
        Out.emit(Out.obj().put("done", true).put("consumed", succeeded.size()).put("deliveries", total.get())
                .put("closed", closed).put("closeMs", closeMs)
                .put("elapsedMs", System.currentTimeMillis() - t0));
        Out.exit(0);
    }

    static boolean closeWithin(final PushConsumer consumer, int seconds) throws InterruptedException {
        Thread t = new Thread(new Runnable() {
            @Override
            public void run() {
                try {
                    consumer.close();
                } catch (Exception e) {
                    Out.log("close failed: " + e);
                }
            }
        }, "mqtrace-close");
        t.setDaemon(true);
        t.start();
        t.join(seconds * 1000L);
        if (t.isAlive()) {
            Out.log("PushConsumer.close() still running after " + seconds + " s; exiting anyway");
            return false;
        }
        return true;
    }
}
