//! The one way the tests wait for something: poll, and on time-out say what was still missing.

use std::time::{Duration, Instant};

/// How often to look, unless a check is costly or the thing awaited quick.
pub const POLL: Duration = Duration::from_millis(200);

/// Polls `check` every `every` until it gives a value. `check` says what is still missing
/// (briefly: it runs on every poll); once `timeout` has passed, the last of those is the error,
/// after `what`. Callers add costly context (an agent's log) only to the error.
pub fn until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(missing) if started.elapsed() >= timeout => {
                anyhow::bail!("{what}: not after {timeout:?}: {missing}")
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// A check's answer for [`until`]: done, or what is still missing.
pub fn done_or(done: bool, missing: impl FnOnce() -> String) -> Result<(), String> {
    if done { Ok(()) } else { Err(missing()) }
}

/// Waits until `done` holds, polling every `every`; false after `timeout` (the caller then
/// asserts on what it finds, with its own message).
pub fn holds(timeout: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let check = || done_or(done(), String::new);
    until("", timeout, every, check).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_returns_the_value_once_there_and_says_what_was_missing_after_the_timeout() {
        let mut polls = 0;
        let found = until(
            "three polls",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                polls += 1;
                if polls == 3 {
                    Ok(polls)
                } else {
                    Err(format!("{polls} polls"))
                }
            },
        );
        assert_eq!(found.unwrap(), 3);
        let never = until::<()>(
            "never",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || Err("still nothing".into()),
        );
        assert_eq!(
            never.unwrap_err().to_string(),
            "never: not after 30ms: still nothing"
        );
        assert!(!holds(
            Duration::from_millis(20),
            Duration::from_millis(5),
            || false
        ));
        assert!(holds(
            Duration::from_millis(20),
            Duration::from_millis(5),
            || true
        ));
    }
}
