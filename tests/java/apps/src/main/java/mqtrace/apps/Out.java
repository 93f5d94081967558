package mqtrace.apps;

import java.io.FileOutputStream;
import java.io.FileDescriptor;
import java.io.PrintStream;
import java.io.UnsupportedEncodingException;
import java.util.Collection;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The one place that writes to stdout: one JSON object per line, nothing else.
 *
 * {@link #init()} must be the first statement of every main(): it keeps a private stream on file
 * descriptor 1 and points {@code System.out} at stderr, so that anything a client library prints
 * to {@code System.out} (console log appenders, stray printlns) ends up on stderr.
 * Pure JDK: usable beside the 4.9.7 and the 5.x clients alike.
 */
public final class Out {
    private static PrintStream json;
    private static String program = "mqtrace-apps";

    private Out() {
    }

    public static synchronized void init(String programName) {
        program = programName;
        if (json != null) {
            return;
        }
        try {
            json = new PrintStream(new FileOutputStream(FileDescriptor.out), false, "UTF-8");
        } catch (UnsupportedEncodingException e) {
            throw new IllegalStateException(e);
        }
        System.setOut(System.err);
        // Keep the clients' own files out of the way unless the caller chose otherwise.
        setDefault("rocketmq.client.logUseSlf4j", "false");
        setDefault("mq.consoleAppender.enabled", "false");
    }

    private static void setDefault(String key, String value) {
        if (System.getProperty(key) == null) {
            System.setProperty(key, value);
        }
    }

    /** Starts a JSON object; fields keep their insertion order. */
    public static Obj obj() {
        return new Obj();
    }

    public static synchronized void emit(Obj o) {
        json.print(o.toString());
        json.print('\n');
        json.flush();
    }

    public static void log(String msg) {
        System.err.println(program + ": " + msg);
        System.err.flush();
    }

    /** Prints the reason on stderr and exits with the code (stdout is flushed first). */
    public static void fail(int code, String msg, Throwable t) {
        synchronized (Out.class) {
            if (json != null) {
                json.flush();
            }
        }
        System.err.println(program + ": error: " + msg);
        if (t != null) {
            t.printStackTrace(System.err);
        }
        System.err.flush();
        Runtime.getRuntime().halt(code);
    }

    /** Flushes and exits (System.exit, so that shutdown hooks run). */
    public static void exit(int code) {
        synchronized (Out.class) {
            if (json != null) {
                json.flush();
            }
        }
        System.err.flush();
        System.exit(code);
    }

    public static final class Obj {
        private final Map<String, Object> fields = new LinkedHashMap<String, Object>();

        public Obj put(String key, Object value) {
            fields.put(key, value);
            return this;
        }

        public Object get(String key) {
            return fields.get(key);
        }

        @Override
        public String toString() {
            StringBuilder sb = new StringBuilder();
            write(sb, fields);
            return sb.toString();
        }
    }

    static void write(StringBuilder sb, Object v) {
        if (v == null) {
            sb.append("null");
        } else if (v instanceof Obj) {
            write(sb, ((Obj) v).fields);
        } else if (v instanceof Boolean || v instanceof Integer || v instanceof Long
                || v instanceof Short || v instanceof Byte) {
            sb.append(v.toString());
        } else if (v instanceof Number) {
            double d = ((Number) v).doubleValue();
            if (Double.isNaN(d) || Double.isInfinite(d)) {
                sb.append("null");
            } else {
                sb.append(v.toString());
            }
        } else if (v instanceof Map) {
            sb.append('{');
            boolean first = true;
            for (Object e0 : ((Map<?, ?>) v).entrySet()) {
                Map.Entry<?, ?> e = (Map.Entry<?, ?>) e0;
                if (!first) {
                    sb.append(',');
                }
                first = false;
                string(sb, String.valueOf(e.getKey()));
                sb.append(':');
                write(sb, e.getValue());
            }
            sb.append('}');
        } else if (v instanceof Collection) {
            sb.append('[');
            Iterator<?> it = ((Collection<?>) v).iterator();
            while (it.hasNext()) {
                write(sb, it.next());
                if (it.hasNext()) {
                    sb.append(',');
                }
            }
            sb.append(']');
        } else {
            string(sb, v.toString());
        }
    }

    static void string(StringBuilder sb, String s) {
        sb.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"':
                    sb.append("\\\"");
                    break;
                case '\\':
                    sb.append("\\\\");
                    break;
                case '\n':
                    sb.append("\\n");
                    break;
                case '\r':
                    sb.append("\\r");
                    break;
                case '\t':
                    sb.append("\\t");
                    break;
                default:
                    if (c < 0x20 || c == 0x2028 || c == 0x2029) {
                        sb.append(String.format("\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
            }
        }
        sb.append('"');
    }
}
