//! The daemon's side of the control socket: accepts connections, checks who is asking (root,
//! the daemon's own user, or a member of the control group, by the kernel's peer credentials:
//! the socket file's mode is not the only guard), reads one request each and hands it to the
//! daemon's loop, which owns the probes and answers.

use std::{
    os::unix::fs::{PermissionsExt, chown},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use super::{MAX_REQUEST_BYTES, Request, Response};
use crate::listeners::{Admission, REQUEST_TIMEOUT};

/// A request waiting for the daemon, with where its answer goes.
pub struct Pending {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// The bound socket; the file is removed when this is dropped, unless a newer agent has put
/// its own in its place.
pub struct ControlSocket {
    path: PathBuf,
    /// The bound file's (device, inode).
    file: (u64, u64),
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if file_id(&self.path).is_some_and(|file| file == self.file) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::symlink_metadata(path).ok()?;
    Some((metadata.dev(), metadata.ino()))
}

/// Where this process binds its control socket before renaming it to `path`.
fn beside(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.{}", std::process::id()))
}

/// Whether a daemon answers on `path`.
pub fn answers(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Binds `path` (mode 0600, or 0660 with `group`) and starts serving; requests arrive on the
/// returned channel. Takes over the socket of a daemon that still answers only when
/// `replace_running` (it has handed over to this one), else refuses.
pub fn serve(
    path: &Path,
    group: Option<&str>,
    replace_running: bool,
) -> anyhow::Result<(ControlSocket, mpsc::Receiver<Pending>)> {
    let gid = group.map(group_id).transpose()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| {
            format!("creating the control socket's directory {}", dir.display())
        })?;
    }
    if !replace_running && answers(path) {
        bail!(
            "another mqtrace daemon is running: its control socket {} answers (stop it, or \
             give this one another --control-socket)",
            path.display()
        );
    }
    // Bound beside the path, given its mode, then renamed over it: whoever asks meanwhile
    // (the CLI, a readiness probe) reaches the old socket or this one, never no socket and
    // never one with the default mode. A file left at `path` by a daemon that did not stop
    // cleanly, or by one that handed over, is replaced the same way.
    let bound_at = beside(path);
    let _ = std::fs::remove_file(&bound_at);
    let listener = UnixListener::bind(&bound_at)
        .with_context(|| format!("binding the control socket {}", bound_at.display()))?;
    let file = file_id(&bound_at).context("the control socket just bound")?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    let placed = std::fs::set_permissions(&bound_at, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", bound_at.display()))
        .and_then(|()| match gid {
            Some(gid) => chown(&bound_at, None, Some(gid))
                .with_context(|| format!("giving {} to group {gid}", bound_at.display())),
            None => Ok(()),
        })
        .and_then(|()| {
            std::fs::rename(&bound_at, path)
                .with_context(|| format!("placing the control socket at {}", path.display()))
        });
    if let Err(error) = placed {
        let _ = std::fs::remove_file(&bound_at);
        return Err(error);
    }
    let socket = ControlSocket {
        path: path.to_path_buf(),
        file,
    };
    let (tx, rx) = mpsc::channel(16);
    let mut admission = Admission::new("control");
    tokio::spawn(async move {
        loop {
            let (stream, slot) = admission
                .next(|| async { listener.accept().await.map(|(stream, _)| stream) })
                .await;
            let tx = tx.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let _ = answer(stream, gid, tx).await;
            });
        }
    });
    Ok((socket, rx))
}

/// Why the peer may not use the control socket, if it may not: root, the daemon's own user
/// and members of the control group (primary or supplementary) may.
fn refusal(uid: u32, gid: u32, pid: Option<i32>, group: Option<u32>) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if uid == 0 || uid == unsafe { libc::geteuid() } {
        return None;
    }
    let Some(group) = group else {
        return Some(format!(
            "refused: uid {uid} is not root (start the daemon with --control-group to let a \
             group in)"
        ));
    };
    let member = gid == group
        || pid
            .is_some_and(|pid| crate::sources::kernel::procfs::groups(pid as u32).contains(&group));
    (!member).then(|| format!("refused: uid {uid} is neither root nor in group {group}"))
}

async fn answer(
    stream: UnixStream,
    group: Option<u32>,
    daemon: mpsc::Sender<Pending>,
) -> anyhow::Result<()> {
    let credentials = stream.peer_cred()?;
    let refused = refusal(
        credentials.uid(),
        credentials.gid(),
        credentials.pid(),
        group,
    );
    let (read, mut write) = stream.into_split();
    // The request is read whoever asks, so that a refused client gets its answer instead of a
    // broken pipe.
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES as u64 + 1));
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .context("no request within the deadline")??;
    let response = match (refused, serde_json::from_str::<Request>(&line)) {
        (Some(message), _) => Response::Error { message },
        (None, Ok(request)) => {
            let (reply, answer) = oneshot::channel();
            daemon.send(Pending { request, reply }).await?;
            answer.await?
        }
        (None, Err(error)) => Response::Error {
            message: format!("not a request mqtrace understands: {error}"),
        },
    };
    let mut text = serde_json::to_string(&response)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    Ok(())
}

/// A group's id, by name or number.
fn group_id(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").context("reading /etc/group")?;
    groups
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next() == Some(group))
                .then(|| fields.nth(1)?.parse().ok())
                .flatten()
        })
        .with_context(|| format!("no group named {group:?} in /etc/group (--control-group)"))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_socket_taken_over_answers_throughout_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let (first, _first_requests) = serve(&path, None, false).unwrap();
        let Err(refused) = serve(&path, None, false) else {
            panic!("a second daemon served the same socket")
        };
        assert!(format!("{refused:#}").contains("another mqtrace daemon is running"));

        let replaced = std::sync::Arc::new(AtomicBool::new(false));
        let asker = std::thread::spawn({
            let (path, replaced) = (path.clone(), replaced.clone());
            move || {
                let mut asked = 0;
                while !replaced.load(Ordering::Relaxed) || asked < 1000 {
                    assert!(answers(&path), "no socket at attempt {asked}");
                    asked += 1;
                }
                asked
            }
        });
        let mut sockets = vec![first];
        for _ in 0..20 {
            let (socket, _requests) = serve(&path, None, true).unwrap();
            sockets.push(socket);
        }
        replaced.store(true, Ordering::Relaxed);
        assert!(asker.join().unwrap() >= 1000);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Each replaced daemon leaves the newest one's file in place; the newest removes it.
        let newest = sockets.pop().unwrap();
        drop(sockets);
        assert!(answers(&path));
        drop(newest);
        assert!(!path.exists());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
