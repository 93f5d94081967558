package mqtrace.apps;

import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;

import org.apache.rocketmq.client.consumer.DefaultMQPushConsumer;
import org.apache.rocketmq.client.consumer.listener.ConsumeConcurrentlyContext;
import org.apache.rocketmq.client.consumer.listener.ConsumeConcurrentlyStatus;
import org.apache.rocketmq.client.consumer.listener.ConsumeOrderlyContext;
import org.apache.rocketmq.client.consumer.listener.ConsumeOrderlyStatus;
import org.apache.rocketmq.client.consumer.listener.MessageListenerConcurrently;
import org.apache.rocketmq.client.consumer.listener.MessageListenerOrderly;
import org.apache.rocketmq.common.consumer.ConsumeFromWhere;
import org.apache.rocketmq.common.message.MessageConst;
import org.apache.rocketmq.common.message.MessageExt;

/**
 * Remoting-protocol push consumer (concurrent or orderly). Uses only API present in
 * rocketmq-client 4.9.7 and 5.x. See README.md.
 */
public final class RemotingConsumer {
    static final String USAGE = "RemotingConsumer --namesrv H:P --topic T --group G --expect N [--orderly] "
            + "[--fail-first K] [--trace] [--timeout-s S] [--api-timeout-ms MS] [--max-reconsume R] [--retry-delay-level L] "
            + "[--sub-expression EXPR] [--poll-namesrv-ms MS] [--rebalance-ms MS] [--linger-ms MS]";

    public static void main(String[] argv) {
        Out.init("RemotingConsumer");
        Args a = Args.parse(argv, USAGE,
                new String[] {"api-timeout-ms", "namesrv", "topic", "group", "expect", "fail-first", "timeout-s", "max-reconsume",
                    "retry-delay-level", "sub-expression", "poll-namesrv-ms", "rebalance-ms", "linger-ms"},
                new String[] {"orderly", "trace"});
        try {
            new RemotingConsumer(a).run();
        } catch (Throwable t) {
            Out.fail(1, "failed: " + t, t);
        }
    }

    private final Args a;
    private final int expect;
    private final int failFirst;
    private final int maxReconsume;
    private final int retryDelayLevel;
    private final boolean orderly;

    /** deliveries per message id, and the ids consumed successfully. */
    private final Map<String, AtomicInteger> deliveries = new ConcurrentHashMap<String, AtomicInteger>();
    private final Map<String, Boolean> succeeded = new ConcurrentHashMap<String, Boolean>();
    private final AtomicInteger totalDeliveries = new AtomicInteger();
    private final AtomicInteger failedDeliveries = new AtomicInteger();
    private final Object doneLock = new Object();

    RemotingConsumer(Args a) {
        this.a = a;
        expect = a.integer("expect", 1);
        failFirst = a.integer("fail-first", 0);
        maxReconsume = a.integer("max-reconsume", -1);
        retryDelayLevel = a.integer("retry-delay-level", 0);
        orderly = a.has("orderly");
        if (a.has("rebalance-ms")) {
            // RebalanceService period (client default 20 s); a static read when the class loads, so
            // set it before any client object exists.
            System.setProperty("rocketmq.client.rebalance.waitInterval", a.str("rebalance-ms", "20000"));
        }
    }


    private boolean handle(MessageExt m) {
        String id = m.getMsgId();
        AtomicInteger n = deliveries.get(id);
        if (n == null) {
            deliveries.putIfAbsent(id, new AtomicInteger());
            n = deliveries.get(id);
        }
        int attempt = n.incrementAndGet();
        totalDeliveries.incrementAndGet();
        boolean fail = attempt <= failFirst;
        if (fail) {
            failedDeliveries.incrementAndGet();
        } else {
            succeeded.put(id, Boolean.TRUE);
        }
        String result = orderly
                ? (fail ? "SUSPEND_CURRENT_QUEUE_A_MOMENT" : "SUCCESS")
                : (fail ? "RECONSUME_LATER" : "CONSUME_SUCCESS");
        Out.emit(Out.obj()
                .put("msgId", m.getMsgId())
                .put("reconsumeTimes", m.getReconsumeTimes())
                .put("topic", m.getTopic())
                .put("queueId", m.getQueueId())
                .put("queueOffset", m.getQueueOffset())
                .put("brokerName", m.getBrokerName())
                .put("offsetMsgId", offsetMsgId(m))
                .put("retryTopic", m.getProperty(MessageConst.PROPERTY_RETRY_TOPIC))
                .put("tags", m.getTags())
                .put("keys", m.getKeys())
                .put("bodyLength", m.getBody() == null ? 0 : m.getBody().length)
                .put("delivery", attempt)
                .put("ts", System.currentTimeMillis())
                .put("ok", !fail)
                .put("result", result));
        synchronized (doneLock) {
            doneLock.notifyAll();
        }
        return !fail;
    }

    private static String offsetMsgId(MessageExt m) {
        try {
            // MessageClientExt (what the client hands out) has getOffsetMsgId(); a plain MessageExt not.
            return (String) m.getClass().getMethod("getOffsetMsgId").invoke(m);
        } catch (Exception e) {
            return null;
        }
    }

    private boolean finished() {
        if (maxReconsume >= 0 && failFirst > maxReconsume) {
            // every message fails past maxReconsumeTimes: wait for R+1 deliveries of each (then DLQ)
            if (deliveries.size() < expect) {
                return false;
            }
            int got = 0;
            for (AtomicInteger n : deliveries.values()) {
                if (n.get() >= maxReconsume + 1) {
                    got++;
                }
            }
            return got >= expect;
        }
        return succeeded.size() >= expect;
    }

    void run() throws Exception {
        String topic = a.required("topic");
        String group = a.required("group");
        int timeoutS = a.integer("timeout-s", 120);
        // (group, enableMsgTrace, customizedTraceTopic): in 4.9.7 and 5.x.
        DefaultMQPushConsumer consumer = new DefaultMQPushConsumer(group, a.has("trace"), null);
        consumer.setNamesrvAddr(a.required("namesrv"));
        consumer.setInstanceName("mqtrace-" + Args.instanceSuffix());
        // timeout of the client's calls to the name server / broker admin API (route lookups);
        // client default 3 s is too short on a loaded 2-core test machine
        consumer.setMqClientApiTimeout(a.integer("api-timeout-ms", 10000));
        consumer.setConsumeFromWhere(ConsumeFromWhere.CONSUME_FROM_FIRST_OFFSET);
        if (a.has("poll-namesrv-ms")) {
            // route refresh period (client default 30 s); the %RETRY% topic's route arrives this way
            consumer.setPollNameServerInterval(a.integer("poll-namesrv-ms", 30000));
        }
        consumer.subscribe(topic, a.str("sub-expression", "*"));
        if (maxReconsume >= 0) {
            consumer.setMaxReconsumeTimes(maxReconsume);
        }
        consumer.setConsumeMessageBatchMaxSize(1);
        if (orderly) {
            consumer.setSuspendCurrentQueueTimeMillis(1000);
            consumer.registerMessageListener(new MessageListenerOrderly() {
                @Override
                public ConsumeOrderlyStatus consumeMessage(List<MessageExt> msgs, ConsumeOrderlyContext ctx) {
                    boolean ok = true;
                    for (MessageExt m : msgs) {
                        ok &= handle(m);
                    }
                    return ok ? ConsumeOrderlyStatus.SUCCESS : ConsumeOrderlyStatus.SUSPEND_CURRENT_QUEUE_A_MOMENT;
                }
            });
        } else {
            consumer.registerMessageListener(new MessageListenerConcurrently() {
                @Override
                public ConsumeConcurrentlyStatus consumeMessage(List<MessageExt> msgs,
                        ConsumeConcurrentlyContext ctx) {
                    boolean ok = true;
                    for (MessageExt m : msgs) {
                        ok &= handle(m);
                    }
                    if (!ok && retryDelayLevel != 0) {
                        ctx.setDelayLevelWhenNextConsume(retryDelayLevel);
                    }
                    return ok ? ConsumeConcurrentlyStatus.CONSUME_SUCCESS : ConsumeConcurrentlyStatus.RECONSUME_LATER;
                }
            });
        }
        long t0 = System.currentTimeMillis();
        consumer.start();
        Out.emit(Out.obj().put("ready", true).put("group", group).put("topic", topic)
                .put("startMs", System.currentTimeMillis() - t0));
        long deadline = t0 + timeoutS * 1000L;
        synchronized (doneLock) {
            while (!finished()) {
                long left = deadline - System.currentTimeMillis();
                if (left <= 0) {
                    Out.fail(2, "timeout after " + timeoutS + " s: " + succeeded.size() + " of " + expect
                            + " messages consumed successfully, " + deliveries.size() + " distinct delivered, "
                            + totalDeliveries.get() + " deliveries", null);
                }
                doneLock.wait(Math.min(left, 200));
            }
        }
        // Let the last result be acknowledged (offset update, send-back, trace record) before stopping.
        Thread.sleep(a.integer("linger-ms", a.has("trace") ? 2000 : 500));
        consumer.shutdown();
        Out.emit(Out.obj().put("done", true).put("consumed", succeeded.size()).put("distinct", deliveries.size())
                .put("deliveries", totalDeliveries.get()).put("failedDeliveries", failedDeliveries.get())
                .put("orderly", orderly).put("elapsedMs", System.currentTimeMillis() - t0));
        Out.exit(0);
    }
}
