//! Child processes that are always stopped, by pid, even when a test fails.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use anyhow::{Context, bail};

/// A child process driven line by line over stdin/stdout; killed on drop.
pub struct Driven {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Driven {
    pub fn spawn(mut command: Command) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads lines until one equals `line`.
    pub fn expect_line(&mut self, line: &str) -> anyhow::Result<()> {
        self.lines_until(line).map(|_| ())
    }

    /// Reads lines until one equals `line`; returns those before it.
    pub fn lines_until(&mut self, line: &str) -> anyhow::Result<Vec<String>> {
        let mut lines = Vec::new();
        let mut buf = String::new();
        loop {
            buf.clear();
            if self.stdout.read_line(&mut buf)? == 0 {
                bail!("child {} exited before saying {line:?}", self.pid());
            }
            if buf.trim_end() == line {
                return Ok(lines);
            }
            lines.push(buf.trim_end().to_string());
        }
    }

    /// Reads the remaining lines, then waits for the child to exit with success.
    pub fn finish(&mut self) -> anyhow::Result<Vec<String>> {
        let lines = (&mut self.stdout).lines().collect::<Result<Vec<_>, _>>()?;
        self.wait_success()?;
        Ok(lines)
    }

    /// Reads lines until one starts with `prefix`, and returns the rest of it.
    pub fn read_value(&mut self, prefix: &str) -> anyhow::Result<String> {
        let mut buf = String::new();
        loop {
            buf.clear();
            if self.stdout.read_line(&mut buf)? == 0 {
                bail!("child {} exited before saying {prefix:?}", self.pid());
            }
            if let Some(rest) = buf.trim_end().strip_prefix(prefix) {
                return Ok(rest.trim().to_string());
            }
        }
    }

    pub fn say(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Waits for the child to exit and fails unless it exited with success.
    pub fn wait_success(&mut self) -> anyhow::Result<()> {
        let status = self.child.wait()?;
        if !status.success() {
            bail!("child {} failed: {status}", self.pid());
        }
        Ok(())
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child's pid, which we have not yet reaped.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// A scratch file of a test, removed when dropped (also when the test fails).
pub struct ScratchFile(pub std::path::PathBuf);

impl ScratchFile {
    /// `name` in the temporary folder, made unique by this process's id; any old one removed.
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `command` in a session of its own, without the test's controlling terminal. A process
/// on a terminal is never held at exec until probed, and the tests that rely on holding must
/// pass wherever they are run from (CI has no terminal, a developer's shell has one). For
/// processes that end by themselves: Ctrl-C on the terminal no longer reaches them.
pub fn without_terminal(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid(2) is async-signal-safe, and the closure touches nothing else between
    // fork and exec. It fails only for a group leader, which a fresh child is not.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        })
    }
}
