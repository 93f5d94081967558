//! The CLI's side of the control socket.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{Context, bail};

use super::{Request, Response};

/// How long the daemon may take to answer (a trace query over a full journal is the slowest).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request to the daemon at `socket`; an `Error` response becomes an error.
pub fn send(socket: &Path, request: &Request) -> anyhow::Result<Response> {
    send_within(socket, request, ANSWER_TIMEOUT)
}

/// As [`send`], waiting at most `timeout` for the answer.
pub fn send_within(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> anyhow::Result<Response> {
    let mut stream = UnixStream::connect(socket).map_err(|e| connect_error(socket, e))?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .with_context(|| format!("waiting for the daemon's answer on {}", socket.display()))?;
    if answer.is_empty() {
        bail!(
            "the daemon on {} closed the connection without answering (is it stopping?)",
            socket.display()
        );
    }
    match serde_json::from_str(&answer).context("reading the daemon's answer")? {
        Response::Error { message } => bail!("{message}"),
        response => Ok(response),
    }
}

fn connect_error(socket: &Path, error: std::io::Error) -> anyhow::Error {
    let shown = socket.display();
    match error.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "no mqtrace daemon is running: nothing listens on {shown} (start one with `mqtrace \
             run`, or name its socket with --socket)"
        ),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "permission denied on {shown}: only root, or members of the group the daemon was \
             given with --control-group, may control it"
        ),
        _ => anyhow::anyhow!("connecting to the mqtrace daemon on {shown}: {error}"),
    }
}
