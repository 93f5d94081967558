//! Reading files of traced processes without trusting them: a process controls what its own
//! root holds, so a path read through `/proc/PID/root` may be a FIFO (an open that never
//! returns), a device (`/dev/zero`, a read that never ends), or a symlink meant to resolve
//! against the agent's root (a host file exported as pod metadata). Here: paths resolve inside
//! the given root (`openat2` with `RESOLVE_IN_ROOT`), the open never blocks, only regular files
//! are read, and at most `max` bytes.

use std::{
    ffi::CString,
    fs::File,
    io::Read,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::FileTypeExt},
    },
    path::Path,
};

/// Why a file was not read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SafeReadError {
    #[error("cannot open it: {0}")]
    Open(i32),
    #[error("not a regular file")]
    NotRegular,
    #[error("reading failed")]
    Read,
}

/// Opens `path` (relative, or absolute meaning inside `root`) resolved inside `root`.
fn open_in_root(root: &Path, path: &Path) -> Result<File, SafeReadError> {
    let root_path =
        CString::new(root.as_os_str().as_bytes()).map_err(|_| SafeReadError::Open(0))?;
    // SAFETY: a valid C string; the fd is owned below.
    let root_fd = unsafe {
        libc::open(
            root_path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if root_fd < 0 {
        return Err(SafeReadError::Open(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ));
    }
    // SAFETY: a fresh fd we own.
    let root_fd = unsafe { OwnedFd::from_raw_fd(root_fd) };
    let relative = path.strip_prefix("/").unwrap_or(path);
    let relative =
        CString::new(relative.as_os_str().as_bytes()).map_err(|_| SafeReadError::Open(0))?;
    // SAFETY: open_how is plain data; all-zero is its empty value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    use std::os::fd::AsRawFd;
    // SAFETY: openat2 with a valid dirfd, C string and open_how of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root_fd.as_raw_fd(),
            relative.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(SafeReadError::Open(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ));
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// At most `max` bytes of the regular file `path` inside `root`.
pub fn read_in_root(root: &Path, path: &Path, max: usize) -> Result<Vec<u8>, SafeReadError> {
    let file = open_in_root(root, path)?;
    let kind = file
        .metadata()
        .map_err(|_| SafeReadError::Read)?
        .file_type();
    if !kind.is_file() || kind.is_fifo() || kind.is_char_device() || kind.is_block_device() {
        return Err(SafeReadError::NotRegular);
    }
    let mut bytes = Vec::new();
    file.take(max as u64)
        .read_to_end(&mut bytes)
        .map_err(|_| SafeReadError::Read)?;
    Ok(bytes)
}

/// At most `max` bytes of a /proc file (procfs files are never FIFOs, but some are large).
pub fn read_capped(path: &Path, max: usize) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)
        .ok()?
        .take(max as u64)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory standing for a process's root, removed on drop.
    struct Root(std::path::PathBuf);

    impl Root {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("mqtrace-root-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("var/run")).unwrap();
            Self(dir)
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const PATH: &str = "/var/run/namespace";

    #[test]
    fn a_regular_file_is_read_up_to_its_cap() {
        let root = Root::new("file");
        std::fs::write(root.0.join("var/run/namespace"), "team-a\n").unwrap();
        assert_eq!(
            read_in_root(&root.0, Path::new(PATH), 100).unwrap(),
            b"team-a\n"
        );
        assert_eq!(read_in_root(&root.0, Path::new(PATH), 4).unwrap(), b"team");
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let root = Root::new("fifo");
        let fifo = CString::new(root.0.join("var/run/namespace").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        assert_eq!(
            read_in_root(&root.0, Path::new(PATH), 100),
            Err(SafeReadError::NotRegular)
        );
    }

    #[test]
    fn symlinks_resolve_inside_the_root_never_to_the_agents_files() {
        let root = Root::new("symlink");
        let link = root.0.join("var/run/namespace");
        // An absolute link to a file every host has: inside this root, there is none.
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        assert!(matches!(
            read_in_root(&root.0, Path::new(PATH), 100),
            Err(SafeReadError::Open(libc::ENOENT))
        ));
        // Climbing out with .. stops at the root too.
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("../../../../../../../../etc/hostname", &link).unwrap();
        assert!(read_in_root(&root.0, Path::new(PATH), 100).is_err());
        // A device is not read even when reachable.
        std::fs::remove_file(&link).unwrap();
        std::fs::create_dir_all(root.0.join("dev")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(read_in_root(&root.0, Path::new(PATH), 100).is_err());
    }
}
