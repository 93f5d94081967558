//! Finding the TLS libraries a process has mapped and where their plaintext boundary is: the
//! file offsets of `SSL_write`, `SSL_read`, `SSL_set_bio` and `BIO_write`, from the dynamic
//! symbols or, for statically linked copies that keep them, the full symbol table (netty's
//! tcnative BoringSSL exports none of them; its `.symtab` has them all). A library unpacked to
//! a temporary file and deleted once loaded (netty does this) is still reached through
//! `/proc/PID/map_files`.

use std::path::PathBuf;

use object::{Object, ObjectSegment, ObjectSymbol};

/// The functions probed, and the programs attached to each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsFunction {
    SslWrite,
    SslRead,
    SslSetBio,
    BioWrite,
}

impl TlsFunction {
    pub const ALL: [TlsFunction; 4] = [
        TlsFunction::SslWrite,
        TlsFunction::SslRead,
        TlsFunction::SslSetBio,
        TlsFunction::BioWrite,
    ];

    pub const fn symbol(self) -> &'static str {
        match self {
            TlsFunction::SslWrite => "SSL_write",
            TlsFunction::SslRead => "SSL_read",
            TlsFunction::SslSetBio => "SSL_set_bio",
            TlsFunction::BioWrite => "BIO_write",
        }
    }

    /// The kernel programs attached at this function: (program, at its return).
    pub const fn programs(self) -> &'static [(&'static str, bool)] {
        match self {
            TlsFunction::SslWrite => &[("ssl_write", false), ("ssl_return", true)],
            TlsFunction::SslRead => &[("ssl_read", false), ("ssl_return", true)],
            TlsFunction::SslSetBio => &[("ssl_set_bio", false)],
            TlsFunction::BioWrite => &[("bio_write", false)],
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
    /// A path that reaches the file from here: `/proc/PID/map_files/START-END`, which works
    /// for deleted files and inside containers alike.
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
/// libcrypto, netty-tcnative (shaded names included), any other "*ssl*".
pub fn may_be_tls(name: &str) -> bool {
    let file = name.rsplit('/').next().unwrap_or(name).to_ascii_lowercase();
    file.contains("ssl") || file.contains("libcrypto") || file.contains("tcnative")
}

/// The executable file mappings of a `/proc/PID/maps` text, one per file.
pub fn executable_files(pid: u32, maps: &str) -> Vec<MappedFile> {
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
        let identity = (device.to_string(), inode);
        if files.iter().any(|f| f.identity == identity) {
            continue;
        }
        files.push(MappedFile {
            identity,
            name: name.to_string(),
            deleted,
            path: PathBuf::from(format!("/proc/{pid}/map_files/{range}")),
        });
    }
    files
}

/// The probed functions an ELF file defines, with their file offsets: from `.dynsym`, then
/// `.symtab` (local symbols included).
pub fn tls_functions(elf: &[u8]) -> anyhow::Result<Vec<(TlsFunction, u64)>> {
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
        if found.iter().any(|&(f, _)| f == function) {
            continue;
        }
        if let Some(offset) = file_offset(&file, symbol.address()) {
            found.push((function, offset));
        }
    }
    found.sort();
    Ok(found)
}

/// The file offset of a virtual address: through the loadable segment that holds it.
fn file_offset(file: &object::File, address: u64) -> Option<u64> {
    file.segments().find_map(|segment| {
        let start = segment.address();
        let (offset, size) = segment.file_range();
        (address >= start && address < start + size).then(|| address - start + offset)
    })
}

/// What a library's functions allow: plaintext needs both `SSL_write` and `SSL_read`, and
/// binding it to a socket needs `BIO_write` (in this file or in another the process maps,
/// libcrypto beside libssl).
pub fn has_plaintext(functions: &[(TlsFunction, u64)]) -> bool {
    [TlsFunction::SslWrite, TlsFunction::SslRead]
        .iter()
        .all(|wanted| functions.iter().any(|(f, _)| f == wanted))
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
";
        let files = executable_files(42, maps);
        assert_eq!(files.len(), 2, "{files:#?}");
        assert_eq!(files[0].name, "/usr/lib/x86_64-linux-gnu/libssl.so.3");
        assert!(!files[0].deleted);
        assert_eq!(
            files[0].path,
            PathBuf::from("/proc/42/map_files/7f0000001000-7f0000050000")
        );
        assert!(files[1].deleted);
        assert!(files[1].name.ends_with("tcnative_linux_x86_6412345.so"));
        assert!(files.iter().all(|f| may_be_tls(&f.name)));
        assert!(!may_be_tls("/usr/lib/jvm/java-17/lib/server/libjvm.so"));
        assert!(may_be_tls("/usr/lib/x86_64-linux-gnu/libcrypto.so.3"));
    }

    /// The system's libssl exports its functions: found with offsets inside the file.
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
        let functions = tls_functions(&elf).unwrap();
        let names: Vec<TlsFunction> = functions.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            names,
            [
                TlsFunction::SslWrite,
                TlsFunction::SslRead,
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
