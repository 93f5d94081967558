//! What both of the daemon's servers (the control socket and `/metrics`) do with the
//! connections they accept: at most so many at once (more are closed at once), a deadline for
//! the request, and a pause after a failed accept (out of file descriptors) instead of a busy
//! loop. Whoever can connect cannot stall the daemon or use up its descriptors.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a client has to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections one server serves at once.
pub const MAX_CONNECTIONS: usize = 64;
/// The pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// A failing accept is logged at most this often.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The connections one server may serve at once, and its failed accepts.
pub struct Admission {
    what: &'static str,
    slots: Arc<Semaphore>,
    last_logged: Option<Instant>,
}

impl Admission {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            last_logged: None,
        }
    }

    /// The next connection `accept` gives while a slot is free, with the slot (held while it
    /// is served). Connections beyond the slots are closed at once; a failed accept pauses.
    pub async fn next<S, Fut>(
        &mut self,
        mut accept: impl FnMut() -> Fut,
    ) -> (S, OwnedSemaphorePermit)
    where
        Fut: std::future::Future<Output = std::io::Result<S>>,
    {
        loop {
            match accept().await {
                Ok(stream) => {
                    if let Some(slot) = self.admit() {
                        return (stream, slot);
                    }
                }
                Err(error) => self.accept_failed(&error).await,
            }
        }
    }

    /// A slot for a connection just accepted; None when every slot is taken.
    fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// After a failed accept: says so (at most once a minute) and pauses.
    async fn accept_failed(&mut self, error: &std::io::Error) {
        let now = Instant::now();
        if self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_LOG_INTERVAL)
        {
            self.last_logged = Some(now);
            tracing::warn!(server = self.what, %error, "accepting a connection failed; retrying");
        }
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

/// Raises the soft limit on open files to the hard one: a daemon that follows many
/// connections and serves clients needs more than the default 1,024.
pub fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with a valid out-pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_and_come_back() {
        let admission = Admission::new("test");
        let held: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|_| admission.admit().unwrap())
            .collect();
        assert!(admission.admit().is_none());
        drop(held);
        assert!(admission.admit().is_some());
    }
}
