package mqtrace.apps;

import java.time.Duration;
import java.util.Collections;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

import org.apache.rocketmq.client.apis.ClientServiceProvider;
import org.apache.rocketmq.client.apis.consumer.FilterExpression;
import org.apache.rocketmq.client.apis.consumer.SimpleConsumer;
import org.apache.rocketmq.client.apis.message.MessageView;

/** gRPC (rocketmq-client-java 5.x) simple consumer: receive, ack / changeInvisibleDuration. */
public final class GrpcSimpleConsumer {
    static final String USAGE = "GrpcSimpleConsumer --endpoint H:P --topic T --group G --expect N "
            + "[--change-invisible] [--tls] [--timeout-s S] [--await-s S] [--invisible-s S] [--max-messages M]";

    public static void main(String[] argv) {
        Out.init("GrpcSimpleConsumer");
        Args a = Args.parse(argv, USAGE,
                new String[] {"endpoint", "topic", "group", "expect", "timeout-s", "await-s", "invisible-s",
                    "max-messages", "request-timeout-s"},
                new String[] {"change-invisible", "tls"});
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
        boolean changeInvisible = a.has("change-invisible");
        int maxMessages = a.integer("max-messages", 16);
        Duration invisible = Duration.ofSeconds(a.integer("invisible-s", 15));

        long t0 = System.currentTimeMillis();
        SimpleConsumer consumer = null;
        try {
            consumer = ClientServiceProvider.loadService().newSimpleConsumerBuilder()
                .setClientConfiguration(Grpc.config(a))
                .setConsumerGroup(group)
                .setAwaitDuration(Duration.ofSeconds(a.integer("await-s", 5)))
                .setSubscriptionExpressions(Collections.singletonMap(topic, FilterExpression.SUB_ALL))
                .build();
        } catch (IllegalStateException e) {
            Grpc.failStart("simple consumer", e);
        }
        Out.emit(Out.obj().put("ready", true).put("group", group).put("topic", topic)
                .put("startMs", System.currentTimeMillis() - t0));
        Set<String> acked = new HashSet<String>();
        Map<String, Integer> receipts = new HashMap<String, Integer>();
        int changed = 0;
        int receives = 0;
        long deadline = t0 + timeoutS * 1000L;
        try {
            while (acked.size() < expect) {
                if (System.currentTimeMillis() > deadline) {
                    Out.fail(2, "timeout after " + timeoutS + " s: " + acked.size() + " of " + expect
                            + " messages acked", null);
                }
                List<MessageView> views = consumer.receive(maxMessages, invisible);
                receives++;
                for (MessageView mv : views) {
                    String id = mv.getMessageId().toString();
                    int n = receipts.merge(id, 1, Integer::sum);
                    String action;
                    if (changeInvisible && n == 1) {
                        consumer.changeInvisibleDuration(mv, Duration.ofSeconds(1));
                        action = "change_invisible";
                        changed++;
                    } else {
                        consumer.ack(mv);
                        acked.add(id);
                        action = "ack";
                    }
                    Out.emit(Grpc.view(mv).put("receipt", n).put("action", action));
                }
            }
        } finally {
            consumer.close();
        }
        Out.emit(Out.obj().put("done", true).put("acked", acked.size()).put("changedInvisible", changed)
                .put("receives", receives).put("elapsedMs", System.currentTimeMillis() - t0));
        Out.exit(0);
    }
}
