package mqtrace.apps;

import java.nio.charset.StandardCharsets;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

import org.apache.rocketmq.client.QueryResult;
import org.apache.rocketmq.client.exception.MQClientException;
import org.apache.rocketmq.common.message.MessageExt;
import org.apache.rocketmq.tools.admin.DefaultMQAdminExt;

/**
 * Finds RocketMQ's own trace records of messages the way RocketMQ Dashboard does: query the trace
 * topic by key (= the message id; trace messages carry the traced ids in their KEYS), decode every
 * body with TraceDataEncoder and keep the beans about that message. {@code --msg-id} takes one id or
 * several, comma-separated (one JVM for all of them).
 */
public final class TraceQuery {
    static final String USAGE = "TraceQuery --namesrv H:P --msg-id X[,Y...] [--trace-topic RMQ_SYS_TRACE_TOPIC] [--wait-s S] "
            + "[--min-records N] [--expect-types Pub,SubBefore,SubAfter] [--with-body]";

    public static void main(String[] argv) {
        Out.init("TraceQuery");
        Args a = Args.parse(argv, USAGE,
                new String[] {"namesrv", "msg-id", "trace-topic", "wait-s", "min-records", "expect-types"},
                new String[] {"with-body"});
        try {
            run(a);
        } catch (Throwable t) {
            Out.fail(1, "failed: " + t, t);
        }
    }

    static void run(Args a) throws Exception {
        String msgId = a.required("msg-id");
        String traceTopic = a.str("trace-topic", "RMQ_SYS_TRACE_TOPIC");
        int waitS = a.integer("wait-s", 20);
        boolean withBody = a.has("with-body");
        int minRecords = Math.max(1, a.integer("min-records", 1));
        Set<String> expectTypes = new HashSet<String>();
        for (String t : a.str("expect-types", "").split(",")) {
            if (!t.trim().isEmpty()) {
                expectTypes.add(t.trim());
            }
        }
        DefaultMQAdminExt admin = new DefaultMQAdminExt();
        admin.setNamesrvAddr(a.required("namesrv"));
        admin.setInstanceName("mqtrace-" + Args.instanceSuffix());
        long t0 = System.currentTimeMillis();
        admin.start();
        boolean allFound = true;
        String[] msgIds = msgId.split(",");
        try {
            for (String id : msgIds) {
                allFound &= query(admin, id.trim(), traceTopic, t0, waitS, minRecords, expectTypes, withBody);
            }
        } finally {
            admin.shutdown();
        }
        Out.emit(Out.obj().put("done", true).put("messages", msgIds.length).put("allFound", allFound)
                .put("elapsedMs", System.currentTimeMillis() - t0));
        if (!allFound) {
            Out.fail(2, "timeout after " + waitS + " s: not every message has its trace records", null);
        }
        Out.exit(0);
    }

    /** Prints the trace records of {@code msgId}, retrying until enough are found or the wait ends. */
    static boolean query(DefaultMQAdminExt admin, String msgId, String traceTopic, long t0, int waitS,
            int minRecords, Set<String> expectTypes, boolean withBody) throws Exception {
        int attempts = 0;
        String lastError = null;
        while (true) {
            attempts++;
            List<Out.Obj> found = new java.util.ArrayList<Out.Obj>();
            Set<String> types = new HashSet<String>();
            Set<String> traceMsgIds = new HashSet<String>();
            int traceMessages = 0;
            try {
                QueryResult r = admin.queryMessage(traceTopic, msgId, 64, 0, System.currentTimeMillis());
                for (MessageExt m : r.getMessageList()) {
                    // the same trace message may be indexed more than once; keep one
                    String key = m.getMsgId() + "/" + m.getCommitLogOffset();
                    if (!traceMsgIds.add(key)) {
                        continue;
                    }
                    traceMessages++;
                    String body = new String(m.getBody(), StandardCharsets.UTF_8);
                    for (Out.Obj o : TraceRecords.decode(body, msgId)) {
                        o.put("traceMsgId", m.getMsgId()).put("traceStoreTimestamp", m.getStoreTimestamp());
                        // mqtrace marks the trace messages it writes; a client's own carry no mark
                        o.put("writer", m.getUserProperty("MQTRACE_AGENT") != null ? "mqtrace" : "client");
                        if (withBody) {
                            // the whole trace message body, base64: TraceDecode's input format
                            o.put("traceBody", java.util.Base64.getEncoder().encodeToString(m.getBody()));
                        }
                        found.add(o);
                        types.add(String.valueOf(o.get("type")));
                    }
                }
                lastError = null;
            } catch (MQClientException e) {
                // "query message by key finished, but no message." while nothing is indexed yet
                lastError = e.getErrorMessage() != null ? e.getErrorMessage() : e.toString();
            }
            boolean enough = found.size() >= minRecords && types.containsAll(expectTypes);
            if (enough || System.currentTimeMillis() - t0 > waitS * 1000L) {
                for (Out.Obj o : found) {
                    Out.emit(o);
                }
                if (!enough) {
                    System.err.println("TraceQuery: " + found.size() + " trace records of " + msgId + " in "
                            + traceTopic + " (types " + types + ", wanted at least " + minRecords
                            + (expectTypes.isEmpty() ? "" : " and types " + expectTypes) + ")"
                            + (lastError == null ? "" : "; last error: " + lastError) + " after " + attempts
                            + " attempts");
                }
                return enough;
            }
            Thread.sleep(500);
        }
    }
}
