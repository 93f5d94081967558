//! Apache's own RocketMQ: from Maven Central the 5.x and 4.x servers, the OpenTelemetry Java
//! agent, and the test applications of `tests/java/apps` over Apache's Java clients; from the Go
//! module proxy the test applications of `tests/go` over Apache's two Go clients; from PyPI the
//! C++ client (in the `rocketmq` package) under `tests/python/cpp-client` and grpcio under
//! `tests/python/grpcio`, from npm the ali-ons
//! client under `tests/node/ali-ons` and Apache's Node.js 5.x client under `tests/node/grpc5`.
//! Maven resolves each pom under `tests/java` to a classpath file in `<peers>/java`
//! (`<name>.classpath`, jars in `~/.m2`); the Java applications are built into
//! `<peers>/java/apps.jar`, the Go ones into `<peers>/bin/mq-go-remoting`, `mq-go-grpc`,
//! `mq-go-tlsecho` (a TLS echo for the TLS capture benchmark) and `mq-go-tlsstrip` (the same,
//! stripped of its symbols); the Python applications get virtual environments in
//! `<peers>/python/<app>`, the Node.js ones their locked packages in `<peers>/node/<app>`.
//! Redone when a source under them is newer
//! than its output, reused otherwise.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use anyhow::{Context, bail};

use crate::{step, workspace_root};

/// The poms resolved to classpaths, with what each is for.
const CLASSPATHS: &[(&str, &str)] = &[
    (
        "rocketmq-5",
        "Apache RocketMQ 5.5.0 (name server, broker, proxy, tools, remoting client)",
    ),
    (
        "rocketmq-4",
        "Apache RocketMQ 4.9.7 (name server, broker, tools, remoting client)",
    ),
    ("otel-agent", "the OpenTelemetry Java agent"),
    (
        "apps",
        "the dependencies of the Java test applications (remoting and gRPC clients)",
    ),
];

/// The Go test applications: their module folder under `tests/go`, the binary's name, and
/// the flags it is built with (the stripped echo: no symbol table, for the TLS probes found
/// through Go's own function table).
const GO_APPS: &[(&str, &str, &[&str])] = &[
    ("remoting", "mq-go-remoting", &[]),
    ("grpc", "mq-go-grpc", &[]),
    ("tlsecho", "mq-go-tlsecho", &[]),
    ("tlsecho", "mq-go-tlsstrip", &["-ldflags=-s -w"]),
];

/// Resolves and builds whatever of Apache's peers is missing or stale.
pub fn ensure(peers: &Path) -> anyhow::Result<()> {
    java(peers)?;
    go(peers)?;
    python(peers)?;
    node(peers)
}

/// A script's test application, installed under `<peers>/<dir>` from `tests/<dir>`: redone
/// when a source is newer than the installed `script`, which `install` copies last (its
/// presence says the installation is complete), into a fresh folder.
fn script_app(
    peers: &Path,
    dir: &str,
    script: &str,
    registry: &str,
    install: impl FnOnce(&Path, &Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let source = workspace_root().join("tests").join(dir);
    let out = peers.join(dir);
    let ready = out.join(script);
    if !stale(&source, &ready)? {
        return Ok(());
    }
    step(&format!(
        "installing the test application tests/{dir} from {registry}"
    ));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    install(&source, &out)?;
    std::fs::copy(source.join(script), &ready)?;
    Ok(())
}

/// The Python test applications, each its script beside a virtual environment holding its
/// pinned packages: the C++ client's (PyPI `rocketmq`: ctypes over the librocketmq.so the
/// wheel bundles) and grpcio's (its stripped BoringSSL, a TLS library the probes cannot read).
fn python(peers: &Path) -> anyhow::Result<()> {
    for (dir, script) in [
        ("python/cpp-client", "mq_cpp.py"),
        ("python/grpcio", "dial.py"),
    ] {
        script_app(peers, dir, script, "PyPI", |source, out| {
            let python = ["python3", "python"]
                .into_iter()
                .find(|p| runs(p, "--version"))
                .context("the Python test applications need Python 3 (python3 on PATH)")?;
            checked(
                Command::new(python)
                    .args(["-m", "venv"])
                    .arg(out.join("venv")),
                "creating its virtual environment",
            )?;
            checked(
                Command::new(out.join("venv/bin/pip"))
                    .args(["install", "-q", "-r"])
                    .arg(source.join("requirements.txt")),
                &format!("pip install -r tests/{dir}/requirements.txt"),
            )
        })?;
    }
    Ok(())
}

/// The Node.js test applications, each its script with the packages its lock file names:
/// ali-ons (remoting) and Apache's 5.x client (rocketmq-client-nodejs, gRPC).
fn node(peers: &Path) -> anyhow::Result<()> {
    for (dir, script) in [
        ("node/ali-ons", "mq-ali-ons.js"),
        ("node/grpc5", "mq-grpc5.js"),
    ] {
        script_app(peers, dir, script, "npm", |source, out| {
            if !runs("node", "--version") || !runs("npm", "--version") {
                crate::setup::apt_install(&["nodejs", "npm"])?;
            }
            for file in ["package.json", "package-lock.json"] {
                std::fs::copy(source.join(file), out.join(file))?;
            }
            checked(
                Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(out),
                &format!("npm ci (tests/{dir}/package-lock.json)"),
            )
        })?;
    }
    Ok(())
}

/// Runs `command`, failing with `what` and its output unless it succeeds.
fn checked(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("{what}: starting {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The Go test applications, built with the machine's Go (1.24 or later: the 5.x client's
/// minimum; Debian's is older, so none is installed here).
fn go(peers: &Path) -> anyhow::Result<()> {
    let go = ["go", "/usr/local/go/bin/go"]
        .into_iter()
        .find(|go| runs(go, "version"))
        .context(
            "the Go test applications need Go 1.24 or later on PATH (or in /usr/local/go): \
             install it from go.dev",
        )?;
    for (module, binary, flags) in GO_APPS {
        let sources = workspace_root().join("tests/go");
        let source = sources.join(module);
        let output = peers.join("bin").join(binary);
        // Both modules use the shared one beside them (jsonout).
        if stale(&sources, &output)? {
            step(&format!(
                "building the Go test application {binary} (tests/go/{module}) with modules \
                 from the Go module proxy"
            ));
            let status = Command::new(go)
                .arg("build")
                .args(*flags)
                .arg("-o")
                .arg(&output)
                .arg(".")
                .current_dir(&source)
                .status()
                .context("running go build")?;
            if !status.success() {
                bail!("building tests/go/{module} failed ({status})");
            }
        }
    }
    Ok(())
}

/// The Java servers, agent and applications, in `<peers>/java`.
fn java(peers: &Path) -> anyhow::Result<()> {
    let out = peers.join("java");
    std::fs::create_dir_all(&out)?;
    if !runs("mvn", "-v") || !runs("java", "-version") {
        step("the Java peers need a JDK and Maven: installing Debian's default-jdk-headless maven");
        crate::setup::apt_install(&["default-jdk-headless", "maven"])?;
    }
    let sources = workspace_root().join("tests/java");
    for (name, what) in CLASSPATHS {
        let pom = sources.join(name).join("pom.xml");
        let classpath = out.join(format!("{name}.classpath"));
        if stale(&sources.join(name), &classpath)? {
            step(&format!(
                "resolving {what} from Maven Central (tests/java/{name}/pom.xml)"
            ));
            maven(
                &pom,
                &[
                    "dependency:build-classpath",
                    &format!("-Dmdep.outputFile={}", classpath.display()),
                ],
            )?;
        }
    }
    let apps = sources.join("apps");
    let jar = out.join("apps.jar");
    if stale(&apps, &jar)? {
        step("building the Java test applications (tests/java/apps)");
        let target = out.join("apps-build");
        maven(
            &apps.join("pom.xml"),
            &["package", &format!("-Dapps.build.dir={}", target.display())],
        )?;
        std::fs::copy(target.join("mqtrace-apps.jar"), &jar)
            .context("copying the built mqtrace-apps.jar")?;
    }
    Ok(())
}

/// Runs Maven quietly in batch mode on `pom`, failing with its output.
fn maven(pom: &Path, args: &[&str]) -> anyhow::Result<()> {
    checked(
        Command::new("mvn")
            .args(["-q", "-B", "-f"])
            .arg(pom)
            .args(args),
        &format!("`mvn -f {} {}`", pom.display(), args.join(" ")),
    )
}

/// Whether `output` is missing or older than a file under `source` (the pom, the sources).
fn stale(source: &Path, output: &Path) -> anyhow::Result<bool> {
    let Ok(built) = output.metadata().and_then(|m| m.modified()) else {
        return Ok(true);
    };
    Ok(latest_change(source)? > built)
}

/// The newest modification time of the files under `dir`, build outputs (`target`) and
/// installed packages (`node_modules`) left out.
fn latest_change(dir: &Path) -> anyhow::Result<SystemTime> {
    let mut latest = SystemTime::UNIX_EPOCH;
    let mut pending: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                if entry.file_name() != "target" && entry.file_name() != "node_modules" {
                    pending.push(entry.path());
                }
            } else {
                latest = latest.max(entry.metadata()?.modified()?);
            }
        }
    }
    Ok(latest)
}

fn runs(program: &str, version_flag: &str) -> bool {
    Command::new(program)
        .arg(version_flag)
        .output()
        .is_ok_and(|out| out.status.success())
}
