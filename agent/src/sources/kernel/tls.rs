//! Finding the TLS libraries a process has mapped and where their plaintext boundary is: the
//! file offsets of `SSL_write`, `SSL_read` (and their `_ex` twins), `SSL_set_bio` and
//! `BIO_write`, from the dynamic
//! symbols or, for statically linked copies that keep them, the full symbol table (netty's
//! tcnative BoringSSL exports none of them; its `.symtab` has them all); in a Go program, of
//! `crypto/tls.(*Conn).Write` and `Read` and of each of their RET instructions (Go moves
//! goroutine stacks, so a return probe's rewritten return address would break it), which a
//! stripped Go program still names in Go's own function table, `.gopclntab`. A library
//! unpacked to a temporary file and deleted once loaded (netty does this) is still reached
//! through `/proc/PID/map_files`.

use std::{fs::File, path::PathBuf};

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, ReadRef};

use super::gopclntab::Pclntab;

/// The functions probed, and the programs attached to each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsFunction {
    SslWrite,
    SslRead,
    SslWriteEx,
    SslReadEx,
    SslSetBio,
    BioWrite,
    GoWrite,
    GoRead,
    /// A RET instruction of Go's `Write` or `Read`.
    GoReturn,
}

impl TlsFunction {
    /// The functions looked up by name.
    pub const ALL: [TlsFunction; 8] = [
        TlsFunction::SslWrite,
        TlsFunction::SslRead,
        TlsFunction::SslWriteEx,
        TlsFunction::SslReadEx,
        TlsFunction::SslSetBio,
        TlsFunction::BioWrite,
        TlsFunction::GoWrite,
        TlsFunction::GoRead,
    ];

    pub const fn symbol(self) -> &'static str {
        match self {
            TlsFunction::SslWrite => "SSL_write",
            TlsFunction::SslRead => "SSL_read",
            TlsFunction::SslWriteEx => "SSL_write_ex",
            TlsFunction::SslReadEx => "SSL_read_ex",
            TlsFunction::SslSetBio => "SSL_set_bio",
            TlsFunction::BioWrite => "BIO_write",
            TlsFunction::GoWrite => "crypto/tls.(*Conn).Write",
            TlsFunction::GoRead => "crypto/tls.(*Conn).Read",
            TlsFunction::GoReturn => "crypto/tls.(*Conn) RET",
        }
    }

    /// The kernel programs attached at this function: (program, at its return).
    pub const fn programs(self) -> &'static [(&'static str, bool)] {
        match self {
            TlsFunction::SslWrite => &[("ssl_write", false), ("ssl_return", true)],
            TlsFunction::SslRead => &[("ssl_read", false), ("ssl_return", true)],
            TlsFunction::SslWriteEx => &[("ssl_write_ex", false), ("ssl_return", true)],
            TlsFunction::SslReadEx => &[("ssl_read_ex", false), ("ssl_return", true)],
            TlsFunction::SslSetBio => &[("ssl_set_bio", false)],
            TlsFunction::BioWrite => &[("bio_write", false)],
            TlsFunction::GoWrite => &[("go_tls_write", false)],
            TlsFunction::GoRead => &[("go_tls_read", false)],
            TlsFunction::GoReturn => &[("go_tls_return", false)],
        }
    }
}

/// An executable file mapped by a process, as `/proc/PID/maps` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedFile {
    /// (device, inode): the same library mapped twice is one file.
    pub identity: (String, u64),
    /// As the process names it (` (deleted)` removed).
    pub name: String,
    pub deleted: bool,
    /// It is the process's program (a Go program carries its TLS inside).
    pub executable: bool,
    /// A path that reaches the file from here, inside containers too: `/proc/PID/root/NAME`,
    /// or for a deleted file `/proc/PID/map_files/START-END` (which needs
    /// CAP_CHECKPOINT_RESTORE).
    pub path: PathBuf,
}

/// A TLS library found in a process: where to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsLibrary {
    pub file: MappedFile,
    /// Each probed function the file defines, with its file offset.
    pub functions: Vec<(TlsFunction, u64)>,
}

/// Whether a file's name says it may hold a TLS library: OpenSSL's and BoringSSL's libssl and
/// libcrypto, netty-tcnative (shaded names included), grpcio's `cygrpc`, any other "*ssl*".
pub fn may_be_tls(name: &str) -> bool {
    let file = name.rsplit('/').next().unwrap_or(name).to_ascii_lowercase();
    file.contains("ssl")
        || file.contains("libcrypto")
        || file.contains("tcnative")
        || file.starts_with("cygrpc.")
}

/// Whether a file without any probed function is a TLS library stripped of its symbols: a
/// shared library named as libssl or netty-tcnative are, or Python grpcio's `cygrpc` module,
/// which links BoringSSL in and is stripped (not libcrypto, which has no `SSL_write`; not a
/// module that calls them, as CPython's `_ssl`; not a program).
pub fn stripped_library(file: &MappedFile) -> bool {
    let name = file.name.rsplit('/').next().unwrap_or(&file.name);
    !file.executable
        && name.contains(".so")
        && (name.starts_with("libssl")
            || name.contains("tcnative")
            || name.contains("boringssl")
            || name.starts_with("cygrpc."))
}

/// Whether a file is the program of a Java virtual machine, whose own TLS (JSSE) is Java code:
/// out of the probes' reach unless the process also loads a native library for it (netty's).
pub fn java_program(file: &MappedFile) -> bool {
    file.executable && file.name.rsplit('/').next() == Some("java")
}

/// The executable file mappings of a `/proc/PID/maps` text, one per file; `program` is the
/// path of the process's program (`/proc/PID/exe`).
pub fn executable_files(pid: u32, maps: &str, program: Option<&str>) -> Vec<MappedFile> {
    let mut files: Vec<MappedFile> = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(range), Some(perms), Some(_offset), Some(device), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        // The path is the rest of the line, spaces included.
        let Some(path_at) = line.find('/') else {
            continue;
        };
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        if !perms.contains('x') || inode == 0 {
            continue;
        }
        let path = &line[path_at..];
        let (name, deleted) = match path.strip_suffix(" (deleted)") {
            Some(name) => (name, true),
            None => (path, false),
        };
        // map_files names its entries without the zero padding maps uses.
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let identity = (device.to_string(), inode);
        if files.iter().any(|f| f.identity == identity) {
            continue;
        }
        files.push(MappedFile {
            identity,
            name: name.to_string(),
            deleted,
            executable: program == Some(path),
            path: if deleted {
                PathBuf::from(format!("/proc/{pid}/map_files/{start:x}-{end:x}"))
            } else {
                PathBuf::from(format!("/proc/{pid}/root{name}"))
            },
        });
    }
    files
}

/// The probed functions of the ELF file at `path`. The file is mapped, not read: a Go program
/// runs to tens of megabytes, of which the symbols are a small part, and a process waits for
/// its probes in the meantime (reading it whole took 20 ms, reading the parts 90 ms).
pub fn tls_functions_of(path: &std::path::Path) -> anyhow::Result<Vec<(TlsFunction, u64)>> {
    let file = File::open(path)?;
    let length = file.metadata()?.len() as usize;
    if length == 0 {
        anyhow::bail!("empty file");
    }
    let mapped = MappedFileBytes::map(&file, length)?;
    tls_functions(mapped.bytes())
}

/// A file mapped read-only, unmapped when dropped.
struct MappedFileBytes {
    address: *mut libc::c_void,
    length: usize,
}

impl MappedFileBytes {
    fn map(file: &File, length: usize) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh private read-only mapping of an open file; checked for failure.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { address, length })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `length` readable bytes and lives as long as `self`. A file
        // truncated meanwhile would fault: the files mapped are libraries and programs that
        // processes run.
        unsafe { std::slice::from_raw_parts(self.address.cast::<u8>(), self.length) }
    }
}

impl Drop for MappedFileBytes {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.address, self.length) };
    }
}

/// The probed functions an ELF file defines, with their file offsets: from `.dynsym`, then
/// `.symtab` (local symbols included), or for Go's in a stripped program from Go's own
/// function table; for Go's, their RET instructions too.
pub fn tls_functions<'data>(elf: impl ReadRef<'data>) -> anyhow::Result<Vec<(TlsFunction, u64)>> {
    let file = object::File::parse(elf)?;
    let mut found = Vec::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        if !symbol.is_definition() || symbol.address() == 0 {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        let Some(function) = TlsFunction::ALL.into_iter().find(|f| f.symbol() == name) else {
            continue;
        };
        add_function(&file, &mut found, function, symbol.address(), symbol.size());
    }
    if !found
        .iter()
        .any(|&(f, _)| matches!(f, TlsFunction::GoWrite | TlsFunction::GoRead))
    {
        for (function, address, size) in go_functions_from_pclntab(&file) {
            add_function(&file, &mut found, function, address, size);
        }
    }
    found.sort();
    Ok(found)
}

/// Adds `function`, at `address` and `size` bytes long, unless found already; for Go's, its
/// RET instructions too.
fn add_function<'data, R: ReadRef<'data>>(
    file: &object::File<'data, R>,
    found: &mut Vec<(TlsFunction, u64)>,
    function: TlsFunction,
    address: u64,
    size: u64,
) {
    if found.iter().any(|&(f, _)| f == function) {
        return;
    }
    let Some(offset) = file_offset(file, address) else {
        return;
    };
    found.push((function, offset));
    if matches!(function, TlsFunction::GoWrite | TlsFunction::GoRead) {
        for ret in returns(file, address, size) {
            if let Some(offset) = file_offset(file, ret) {
                found.push((TlsFunction::GoReturn, offset));
            }
        }
    }
}

/// Go's `Write` and `Read` (address, size) from `.gopclntab`, the function table a Go program
/// keeps when stripped of its symbols (Go 1.25 and older named it `.data.rel.ro.gopclntab` in
/// a PIE; linked externally, a PIE has it merged into `.data.rel.ro`, where it is not looked
/// for).
fn go_functions_from_pclntab<'data, R: ReadRef<'data>>(
    file: &object::File<'data, R>,
) -> Vec<(TlsFunction, u64, u64)> {
    let Some(section) = file
        .section_by_name(".gopclntab")
        .or_else(|| file.section_by_name(".data.rel.ro.gopclntab"))
    else {
        return Vec::new();
    };
    let Some(table) = section.data().ok().and_then(Pclntab::parse) else {
        return Vec::new();
    };
    let moduledata = file
        .section_by_name(".go.module")
        .and_then(|section| section.data().ok());
    let Some(text_start) = table.text_start(section.address(), moduledata) else {
        return Vec::new();
    };
    let go_functions = [TlsFunction::GoWrite, TlsFunction::GoRead];
    let names = go_functions.map(TlsFunction::symbol);
    table
        .functions(text_start, &names)
        .into_iter()
        .filter_map(|found| {
            let function = go_functions
                .into_iter()
                .find(|f| f.symbol() == found.name)?;
            Some((function, found.address, found.size))
        })
        .collect()
}

/// The addresses of the RET instructions of the function at `address`, `size` bytes long.
fn returns<'data, R: ReadRef<'data>>(
    file: &object::File<'data, R>,
    address: u64,
    size: u64,
) -> Vec<u64> {
    let Some(code) = file
        .sections()
        .find(|s| {
            // Checked: the address and size come from the file, which may be malformed.
            let (end, limit) = (address.checked_add(size), s.address().checked_add(s.size()));
            matches!((end, limit), (Some(end), Some(limit)) if s.address() <= address && end <= limit)
        })
        .and_then(|section| section.data_range(address, size).ok().flatten())
    else {
        return Vec::new();
    };
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    decoder
        .iter()
        .filter(|instruction| matches!(instruction.mnemonic(), Mnemonic::Ret | Mnemonic::Retf))
        .map(|instruction| instruction.ip())
        .collect()
}

/// The file offset of a virtual address: through the loadable segment that holds it.
fn file_offset<'data, R: ReadRef<'data>>(
    file: &object::File<'data, R>,
    address: u64,
) -> Option<u64> {
    file.segments().find_map(|segment| {
        let start = segment.address();
        let (offset, size) = segment.file_range();
        let end = start.checked_add(size)?;
        (address >= start && address < end).then(|| address - start + offset)
    })
}

/// What a library's functions allow: plaintext needs both `SSL_write` and `SSL_read` (or Go's
/// `Write` and `Read`); binding it to a socket needs `BIO_write` (in this file or in another
/// the process maps, libcrypto beside libssl) or a library that writes its socket itself.
pub fn has_plaintext(functions: &[(TlsFunction, u64)]) -> bool {
    let has = |wanted: TlsFunction| functions.iter().any(|&(f, _)| f == wanted);
    (has(TlsFunction::SslWrite) && has(TlsFunction::SslRead))
        || (has(TlsFunction::SslWriteEx) && has(TlsFunction::SslReadEx))
        || (has(TlsFunction::GoWrite) && has(TlsFunction::GoRead))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_file_mappings_once_each_deleted_ones_by_map_files() {
        let maps = "\
7f0000000000-7f0000001000 r--p 00000000 08:01 100 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000001000-7f0000050000 r-xp 00001000 08:01 100 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000060000-7f0000090000 r-xp 00010000 08:01 100 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1000000000-7f1000100000 r-xp 00000000 00:2a 77 /tmp/liborg_apache_rocketmq_shaded_io_grpc_netty_shaded_netty_tcnative_linux_x86_6412345.so (deleted)
7f2000000000-7f2000001000 rw-p 00000000 00:00 0 [heap]
7f3000000000-7f3000001000 r-xp 00000000 00:00 0 
00400000-00a2c000 r-xp 00000000 08:01 300 /usr/bin/other (deleted)
";
        let files = executable_files(42, maps, Some("/usr/bin/other (deleted)"));
        assert_eq!(files.len(), 3, "{files:#?}");
        assert_eq!(files[0].name, "/usr/lib/x86_64-linux-gnu/libssl.so.3");
        assert!(!files[0].deleted);
        assert_eq!(
            files[0].path,
            PathBuf::from("/proc/42/root/usr/lib/x86_64-linux-gnu/libssl.so.3")
        );
        assert!(files[1].deleted);
        assert_eq!(
            files[1].path,
            PathBuf::from("/proc/42/map_files/7f1000000000-7f1000100000")
        );
        assert!(files[1].name.ends_with("tcnative_linux_x86_6412345.so"));
        assert!(
            files[..2]
                .iter()
                .all(|f| may_be_tls(&f.name) && !f.executable)
        );
        // The program, replaced on disk while it runs; its entry named as map_files names it.
        assert!(files[2].executable && files[2].deleted);
        assert_eq!(
            files[2].path,
            PathBuf::from("/proc/42/map_files/400000-a2c000")
        );
        assert_eq!(
            files[2].path,
            PathBuf::from("/proc/42/map_files/400000-a2c000")
        );
        assert!(!may_be_tls("/usr/lib/jvm/java-17/lib/server/libjvm.so"));
        assert!(may_be_tls("/usr/lib/x86_64-linux-gnu/libcrypto.so.3"));
        assert!(stripped_library(&files[0]) && !stripped_library(&files[2]));
    }

    /// The system's libssl exports its functions: found with offsets inside the file.
    /// What a file's name and kind say before its symbols are read, and what a file without
    /// the functions probed is then taken for.
    #[test]
    fn tls_libraries_told_by_name_stripped_ones_and_java() {
        let file = |name: &str, executable: bool| MappedFile {
            identity: ("08:01".into(), 1),
            name: name.into(),
            deleted: false,
            executable,
            path: name.into(),
        };
        let grpcio = "/venv/lib/python3.11/site-packages/grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so";
        for name in ["/usr/lib/libssl.so.3", "/usr/lib/libcrypto.so.3", grpcio] {
            assert!(may_be_tls(name), "{name}");
        }
        assert!(!may_be_tls("/usr/lib/libz.so.1"));
        assert!(stripped_library(&file("/usr/lib/libssl.so.3", false)));
        assert!(stripped_library(&file(grpcio, false)));
        assert!(!stripped_library(&file("/usr/lib/libcrypto.so.3", false)));
        assert!(!stripped_library(&file(
            "/usr/lib/python3.11/lib-dynload/_ssl.cpython-311.so",
            false
        )));
        assert!(java_program(&file("/usr/lib/jvm/java-17/bin/java", true)));
        assert!(!java_program(&file("/usr/lib/jvm/java-17/bin/java", false)));
        assert!(!java_program(&file("/usr/bin/javac", true)));
    }

    #[test]
    fn system_libssl_functions_from_dynamic_symbols() {
        let Some(path) = [
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            "/lib/x86_64-linux-gnu/libssl.so.3",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists()) else {
            panic!("libssl3 is not installed (Debian's libssl3 is a dependency of the test setup)");
        };
        let elf = std::fs::read(path).unwrap();
        let functions = tls_functions(elf.as_slice()).unwrap();
        assert_eq!(
            tls_functions_of(std::path::Path::new(path)).unwrap(),
            functions
        );
        let names: Vec<TlsFunction> = functions.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            names,
            [
                TlsFunction::SslWrite,
                TlsFunction::SslRead,
                TlsFunction::SslWriteEx,
                TlsFunction::SslReadEx,
                TlsFunction::SslSetBio
            ]
        );
        assert!(has_plaintext(&functions));
        assert!(
            functions
                .iter()
                .all(|&(_, offset)| (offset as usize) < elf.len())
        );
    }
}
