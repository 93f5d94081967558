//! The `grpc-broker` test peer (tests/src/bin/grpc-broker.rs): an in-memory RocketMQ 5 server
//! of the gRPC API, for the 5.x clients, started for a test and killed by pid on drop.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, ChildStdout, Command, Stdio},
};

use anyhow::{Context, bail};

/// The `grpc-broker` binary of the same build as the running executable: beside it (helper
/// binaries) or one level up (tests, which run from `deps/`).
pub fn grpc_broker_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let bin = [dir, dir.parent().unwrap()]
        .iter()
        .map(|d| d.join("grpc-broker"))
        .find(|b| b.exists());
    bin.unwrap_or_else(|| {
        panic!(
            "no grpc-broker binary beside {}: build it with `cargo build -p mqtrace-tests --bins`",
            exe.display()
        )
    })
}

pub struct GrpcBroker {
    child: Child,
    endpoint: String,
    // Kept open so that the server never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl GrpcBroker {
    /// Starts one on a free port of 127.0.0.1.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0", false)
    }

    /// Starts one listening on `listen` (`IP:PORT`, port 0 for any); `verbose` logs every call
    /// on its stderr, which is this process's.
    pub fn start_on(listen: &str, verbose: bool) -> anyhow::Result<Self> {
        let mut command = Command::new(grpc_broker_bin());
        command.args(["--listen", listen]);
        if verbose {
            command.arg("--verbose");
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let mut stdout = BufReader::new(child.stdout.take().context("grpc-broker stdout")?);
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let endpoint = line.trim().strip_prefix("listening ").map(str::to_string);
        // From here on, `Drop` kills it whatever goes wrong.
        let mut broker = Self {
            child,
            endpoint: String::new(),
            _stdout: stdout,
        };
        read.context("reading grpc-broker's stdout")?;
        match endpoint {
            Some(endpoint) => broker.endpoint = endpoint,
            None => bail!(
                "grpc-broker {} said {line:?} instead of \"listening HOST:PORT\"",
                broker.pid()
            ),
        }
        Ok(broker)
    }

    /// `HOST:PORT` it listens on, as the clients' `--endpoint` wants it.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for GrpcBroker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child's pid, which we have not yet reaped.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}
