package mqtrace.apps;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.Base64;

/**
 * Reads raw trace message bodies, one per line, base64 (standard alphabet; `raw:` prefix = plain text
 * with \u0001/\u0002 kept), and prints the decoded records as TraceQuery does. rocketmq-client only.
 */
public final class TraceDecode {
    static final String USAGE = "TraceDecode [--msg-id X]   (stdin: one base64 trace body per line)";

    public static void main(String[] argv) {
        Out.init("TraceDecode");
        Args a = Args.parse(argv, USAGE, new String[] {"msg-id"}, new String[] {});
        String msgId = a.str("msg-id", null);
        int lines = 0;
        int records = 0;
        int bad = 0;
        try {
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
            String line;
            while ((line = in.readLine()) != null) {
                line = line.trim();
                if (line.isEmpty()) {
                    continue;
                }
                lines++;
                String body;
                try {
                    body = line.startsWith("raw:") ? line.substring(4)
                            : new String(Base64.getMimeDecoder().decode(line), StandardCharsets.UTF_8);
                } catch (IllegalArgumentException e) {
                    bad++;
                    Out.log("line " + lines + ": not base64: " + e.getMessage());
                    continue;
                }
                try {
                    for (Out.Obj o : TraceRecords.decode(body, msgId)) {
                        Out.emit(o.put("line", lines));
                        records++;
                    }
                } catch (RuntimeException e) {
                    bad++;
                    Out.log("line " + lines + ": TraceDataEncoder could not decode it: " + e);
                }
            }
        } catch (Throwable t) {
            Out.fail(1, "failed: " + t, t);
        }
        Out.emit(Out.obj().put("done", true).put("lines", lines).put("records", records).put("bad", bad));
        Out.exit(bad == 0 ? 0 : 1);
    }
}
