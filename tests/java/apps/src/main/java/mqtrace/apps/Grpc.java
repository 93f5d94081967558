package mqtrace.apps;

import java.time.Duration;
import java.util.ArrayList;

import org.apache.rocketmq.client.apis.ClientConfiguration;
import org.apache.rocketmq.client.apis.ClientConfigurationBuilder;
import org.apache.rocketmq.client.apis.message.MessageView;

/** Shared bits of the gRPC (rocketmq-client-java 5.x) programs. */
final class Grpc {
    private Grpc() {
    }

    /** TLS is the client's default; without --tls it is turned off (enableSsl(false)). */
    static ClientConfiguration config(Args a) {
        ClientConfigurationBuilder b = ClientConfiguration.newBuilder()
                .setEndpoints(a.required("endpoint"))
                .setRequestTimeout(Duration.ofSeconds(a.integer("request-timeout-s", 10)));
        if (!a.has("tls")) {
            b.enableSsl(false);
        }
        return b.build();
    }

    /** The client's start-up failure (IllegalStateException "... has FAILED") with its root cause and a hint. */
    static void failStart(String what, Throwable t) {
        Throwable root = t;
        while (root.getCause() != null && root.getCause() != root) {
            root = root.getCause();
        }
        String msg = String.valueOf(root.getMessage());
        String hint = "";
        if (msg.contains("group not found") || msg.contains("Stream is already completed")) {
            hint = " -- usually the consumer group does not exist (the client log "
                    + "~/logs/rocketmq/rocketmq-client.log then says 'group not found'); "
                    + "the proxy does not create consumer groups for gRPC clients: create it first "
                    + "(mqadmin updateSubGroup -c DefaultCluster -g G)";
        } else if (msg.contains("No topic route info")) {
            hint = " -- gRPC clients do not create topics: create it first with its message type "
                    + "(mqadmin updateTopic -t T -a +message.type=NORMAL)";
        }
        Out.fail(1, what + " did not start: " + root + hint, t);
    }

    static Out.Obj view(MessageView mv) {
        return Out.obj()
                .put("msgId", mv.getMessageId().toString())
                .put("deliveryAttempt", mv.getDeliveryAttempt())
                .put("topic", mv.getTopic())
                .put("tag", mv.getTag().orElse(null))
                .put("keys", new ArrayList<String>(mv.getKeys()))
                .put("messageGroup", mv.getMessageGroup().orElse(null))
                .put("deliveryTimestamp", mv.getDeliveryTimestamp().orElse(null))
                .put("bornHost", mv.getBornHost())
                .put("bornTimestamp", mv.getBornTimestamp())
                .put("bodyLength", mv.getBody().remaining())
                .put("ts", System.currentTimeMillis());
    }
}
