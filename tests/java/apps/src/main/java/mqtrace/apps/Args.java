package mqtrace.apps;

import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Map;
import java.util.Set;

/** `--name value` flags and bare `--flag` switches; unknown flags are a usage error (exit 64). */
public final class Args {
    public static final int USAGE = 64;

    private final Map<String, String> values = new HashMap<String, String>();
    private final Set<String> switches = new HashSet<String>();
    private final String usage;

    private Args(String usage) {
        this.usage = usage;
    }

    /**
     * @param valueFlags names (without "--") that take a value
     * @param switchFlags names (without "--") that take none
     */
    public static Args parse(String[] argv, String usage, String[] valueFlags, String[] switchFlags) {
        Args a = new Args(usage);
        Set<String> vf = new HashSet<String>(Arrays.asList(valueFlags));
        Set<String> sf = new HashSet<String>(Arrays.asList(switchFlags));
        for (int i = 0; i < argv.length; i++) {
            String t = argv[i];
            if (t.equals("-h") || t.equals("--help")) {
                System.err.println("usage: " + usage);
                Out.exit(0);
            }
            if (!t.startsWith("--")) {
                a.usageError("unexpected argument '" + t + "'");
            }
            String name = t.substring(2);
            String inline = null;
            int eq = name.indexOf('=');
            if (eq >= 0) {
                inline = name.substring(eq + 1);
                name = name.substring(0, eq);
            }
            if (sf.contains(name)) {
                if (inline != null) {
                    a.usageError("--" + name + " takes no value");
                }
                a.switches.add(name);
            } else if (vf.contains(name)) {
                if (inline != null) {
                    a.values.put(name, inline);
                } else {
                    if (i + 1 >= argv.length) {
                        a.usageError("--" + name + " needs a value");
                    }
                    a.values.put(name, argv[++i]);
                }
            } else {
                a.usageError("unknown flag --" + name);
            }
        }
        return a;
    }

    public void usageError(String msg) {
        System.err.println("usage: " + usage);
        Out.fail(USAGE, msg, null);
    }

    public boolean has(String name) {
        return switches.contains(name) || values.containsKey(name);
    }

    public String str(String name, String dflt) {
        String v = values.get(name);
        return v == null ? dflt : v;
    }

    public String required(String name) {
        String v = values.get(name);
        if (v == null || v.isEmpty()) {
            usageError("--" + name + " is required");
        }
        return v;
    }

    public int integer(String name, int dflt) {
        String v = values.get(name);
        if (v == null) {
            return dflt;
        }
        try {
            return Integer.parseInt(v.trim());
        } catch (NumberFormatException e) {
            usageError("--" + name + " needs an integer, got '" + v + "'");
            return dflt;
        }
    }

    public double number(String name, double dflt) {
        String v = values.get(name);
        if (v == null) {
            return dflt;
        }
        try {
            return Double.parseDouble(v.trim());
        } catch (NumberFormatException e) {
            usageError("--" + name + " needs a number, got '" + v + "'");
            return dflt;
        }
    }

    /** A process-unique suffix, for client instance names (several clients in one host). */
    public static String instanceSuffix() {
        String pid = java.lang.management.ManagementFactory.getRuntimeMXBean().getName();
        int at = pid.indexOf('@');
        return (at > 0 ? pid.substring(0, at) : pid) + "-" + Long.toHexString(System.nanoTime());
    }
}
