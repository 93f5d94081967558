package mqtrace.apps;

import java.util.ArrayList;
import java.util.List;

import org.apache.rocketmq.client.trace.TraceBean;
import org.apache.rocketmq.client.trace.TraceContext;
import org.apache.rocketmq.client.trace.TraceDataEncoder;

/** Decodes RocketMQ message-trace bodies (RMQ_SYS_TRACE_TOPIC) into JSON lines. rocketmq-client only. */
final class TraceRecords {
    private TraceRecords() {
    }

    /**
     * One JSON object per (TraceContext, TraceBean); when msgId is non-null only the beans about that
     * message (bean msgId equal, or offsetMsgId equal) are returned.
     */
    static List<Out.Obj> decode(String body, String msgId) {
        List<Out.Obj> out = new ArrayList<Out.Obj>();
        List<TraceContext> contexts = TraceDataEncoder.decoderFromTraceDataString(body);
        // The raw records, to tell which fields were really in the record: TraceBean initialises
        // storeHost/clientHost to the DECODING process's address when a record has no such field.
        List<String[]> raw = new ArrayList<String[]>();
        for (String rec : body.split(String.valueOf(TRACE_RECORD_END))) {
            if (!rec.trim().isEmpty()) {
                raw.add(rec.split(String.valueOf(TRACE_FIELD_SEP), -1));
            }
        }
        boolean zip = raw.size() == contexts.size();
        for (int i = 0; i < contexts.size(); i++) {
            TraceContext ctx = contexts.get(i);
            List<TraceBean> beans = ctx.getTraceBeans();
            if (beans == null) {
                continue;
            }
            for (TraceBean b : beans) {
                if (msgId != null && !msgId.equals(b.getMsgId()) && !msgId.equals(b.getOffsetMsgId())) {
                    continue;
                }
                Out.Obj o = record(ctx, b);
                if (zip) {
                    String[] f = raw.get(i);
                    String type = String.valueOf(o.get("type"));
                    o.put("fieldCount", f.length);
                    boolean hasStoreHost = type.equals("Pub") || type.equals("EndTransaction");
                    // Pub: 14 fields from the Java clients, a 15th (clientHost) from some other writers
                    boolean hasClientHost = type.equals("Pub") && f.length >= 15;
                    if (!hasStoreHost) {
                        o.put("storeHost", null);
                    }
                    if (!hasClientHost) {
                        o.put("clientHost", null);
                    }
                }
                out.add(o);
            }
        }
        return out;
    }

    private static final char TRACE_FIELD_SEP = (char) 1;
    private static final char TRACE_RECORD_END = (char) 2;

    static Out.Obj record(TraceContext ctx, TraceBean b) {
        String type = ctx.getTraceType() == null ? null : ctx.getTraceType().name();
        Out.Obj o = Out.obj()
                .put("type", type)
                .put("groupName", ctx.getGroupName())
                .put("topic", b.getTopic())
                .put("msgId", b.getMsgId())
                .put("offsetMsgId", b.getOffsetMsgId())
                .put("tags", b.getTags())
                .put("keys", b.getKeys())
                .put("storeHost", b.getStoreHost())
                .put("bodyLength", b.getBodyLength())
                .put("costTime", ctx.getCostTime())
                .put("msgType", b.getMsgType() == null ? null : b.getMsgType().name())
                .put("msgTypeOrdinal", b.getMsgType() == null ? null : b.getMsgType().ordinal())
                .put("success", ctx.isSuccess())
                .put("retryTimes", b.getRetryTimes())
                .put("requestId", ctx.getRequestId())
                .put("contextCode", ctx.getContextCode())
                .put("timeStamp", ctx.getTimeStamp())
                .put("clientHost", b.getClientHost())
                .put("regionId", ctx.getRegionId());
        if ("EndTransaction".equals(type)) {
            o.put("transactionId", b.getTransactionId())
                    .put("transactionState", b.getTransactionState() == null ? null : b.getTransactionState().name())
                    .put("fromTransactionCheck", b.isFromTransactionCheck());
        }
        return o;
    }
}
