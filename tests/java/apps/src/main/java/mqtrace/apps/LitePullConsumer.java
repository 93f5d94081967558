package mqtrace.apps;

import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

import org.apache.rocketmq.client.consumer.DefaultLitePullConsumer;
import org.apache.rocketmq.common.consumer.ConsumeFromWhere;
import org.apache.rocketmq.common.message.MessageExt;

/**
 * Remoting-protocol lite pull consumer: subscribe, poll, commitSync. API of 4.9.7 and 5.x.
 */
public final class LitePullConsumer {
    static final String USAGE = "LitePullConsumer --namesrv H:P --topic T --group G --expect N [--timeout-s S] [--api-timeout-ms MS] "
            + "[--poll-ms MS] [--sub-expression EXPR] [--poll-namesrv-ms MS] [--rebalance-ms MS]";

    public static void main(String[] argv) {
        Out.init("LitePullConsumer");
        Args a = Args.parse(argv, USAGE,
                new String[] {"api-timeout-ms", "namesrv", "topic", "group", "expect", "timeout-s", "poll-ms", "sub-expression", "poll-namesrv-ms", "rebalance-ms"},
                new String[] {});
        try {
            run(a);
        } catch (Throwable t) {
            Out.fail(1, "failed: " + t, t);
        }
    }

    static void run(Args a) throws Exception {
        String topic = a.required("topic");
        String group = a.required("group");
        int expect = a.integer("expect", 1);
        int timeoutS = a.integer("timeout-s", 120);
        long pollMs = a.integer("poll-ms", 1000);
        if (a.has("rebalance-ms")) {
            // RebalanceService period (client default 20 s); a static read when the class loads, so
            // set it before any client object exists.
            System.setProperty("rocketmq.client.rebalance.waitInterval", a.str("rebalance-ms", "20000"));
        }

        DefaultLitePullConsumer consumer = new DefaultLitePullConsumer(group);
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
        consumer.setAutoCommit(false);
        consumer.subscribe(topic, a.str("sub-expression", "*"));
        long t0 = System.currentTimeMillis();
        consumer.start();
        Out.emit(Out.obj().put("ready", true).put("group", group).put("topic", topic)
                .put("startMs", System.currentTimeMillis() - t0));
        Map<String, Integer> seen = new ConcurrentHashMap<String, Integer>();
        int polls = 0;
        int records = 0;
        long deadline = t0 + timeoutS * 1000L;
        try {
            while (seen.size() < expect) {
                if (System.currentTimeMillis() > deadline) {
                    Out.fail(2, "timeout after " + timeoutS + " s: " + seen.size() + " of " + expect
                            + " messages pulled", null);
                }
                List<MessageExt> msgs = consumer.poll(pollMs);
                polls++;
                if (msgs == null || msgs.isEmpty()) {
                    continue;
                }
                for (MessageExt m : msgs) {
                    records++;
                    int n = seen.merge(m.getMsgId(), 1, Integer::sum);
                    Out.emit(Out.obj()
                            .put("msgId", m.getMsgId())
                            .put("reconsumeTimes", m.getReconsumeTimes())
                            .put("topic", m.getTopic())
                            .put("queueId", m.getQueueId())
                            .put("queueOffset", m.getQueueOffset())
                            .put("brokerName", m.getBrokerName())
                            .put("tags", m.getTags())
                            .put("keys", m.getKeys())
                            .put("bodyLength", m.getBody() == null ? 0 : m.getBody().length)
                            .put("delivery", n)
                            .put("ts", System.currentTimeMillis())
                            .put("result", "PULLED"));
                }
                consumer.commitSync();
            }
            // commitSync only updates the client's offset table; the store to the broker is periodic
            // (persistConsumerOffsetInterval, 5 s) and at shutdown.
        } finally {
            consumer.shutdown();
        }
        Out.emit(Out.obj().put("done", true).put("consumed", seen.size()).put("records", records)
                .put("polls", polls).put("elapsedMs", System.currentTimeMillis() - t0));
        Out.exit(0);
    }
}
