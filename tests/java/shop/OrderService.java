package shop;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.net.Socket;
import java.nio.charset.StandardCharsets;

/**
 * A JVM producer for the tests: no RocketMQ client library can be fetched here, so it writes
 * SEND_MESSAGE (10) frames with a JSON header, as the wire reference lays them out, straight to
 * the broker, one at a time, and prints each answer's header.
 *
 * <p>usage: java shop.OrderService BROKER_HOST:PORT TOPIC COUNT [--hold]
 *
 * <p>--hold: after the last message, run on until stdin closes, as a service does.
 */
public class OrderService {
    private static final String KEY_VALUE = String.valueOf((char) 1);
    private static final String PAIR_END = String.valueOf((char) 2);

    public static void main(String[] args) throws Exception {
        String[] broker = args[0].split(":");
        String topic = args[1];
        int count = Integer.parseInt(args[2]);
        try (Socket socket = new Socket(broker[0], Integer.parseInt(broker[1]))) {
            DataOutputStream out =
                    new DataOutputStream(new BufferedOutputStream(socket.getOutputStream()));
            DataInputStream in =
                    new DataInputStream(new BufferedInputStream(socket.getInputStream()));
            for (int i = 0; i < count; i++) {
                String properties = "KEYS" + KEY_VALUE + "order-" + i + PAIR_END
                        + "TAGS" + KEY_VALUE + "TagJava" + PAIR_END
                        + "WAIT" + KEY_VALUE + "true" + PAIR_END;
                String header = "{\"code\":10,\"flag\":0,\"opaque\":" + (i + 1)
                        + ",\"language\":\"JAVA\",\"version\":453,\"extFields\":{"
                        + "\"producerGroup\":\"order_service\",\"topic\":\"" + topic + "\","
                        + "\"defaultTopic\":\"TBW102\",\"defaultTopicQueueNums\":\"4\","
                        + "\"queueId\":\"0\",\"sysFlag\":\"0\","
                        + "\"bornTimestamp\":\"" + System.currentTimeMillis() + "\","
                        + "\"flag\":\"0\",\"properties\":\"" + json(properties) + "\","
                        + "\"reconsumeTimes\":\"0\",\"unitMode\":\"false\",\"batch\":\"false\"},"
                        + "\"serializeTypeCurrentRPC\":\"JSON\"}";
                byte[] head = header.getBytes(StandardCharsets.UTF_8);
                byte[] body = ("order " + i).getBytes(StandardCharsets.UTF_8);
                out.writeInt(4 + head.length + body.length);
                out.writeInt(head.length); // serialize type 0: JSON
                out.write(head);
                out.write(body);
                out.flush();
                int length = in.readInt();
                int headerLength = in.readInt() & 0xFFFFFF;
                byte[] reply = new byte[length - 4];
                in.readFully(reply);
                String answer = new String(reply, 0, headerLength, StandardCharsets.UTF_8);
                if (!answer.contains("\"code\":0")) {
                    throw new IllegalStateException("message " + i + ": " + answer);
                }
                System.out.println(answer);
            }
            System.out.flush();
            if (args.length > 3 && args[3].equals("--hold")) {
                System.in.transferTo(java.io.OutputStream.nullOutputStream());
            }
        }
    }

    /** The RocketMQ property separators, escaped for a JSON string. */
    private static String json(String text) {
        return text.replace(KEY_VALUE, "\\u0001").replace(PAIR_END, "\\u0002");
    }
}
