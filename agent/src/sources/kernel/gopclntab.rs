//! Go's function table, `.gopclntab`: the runtime needs it (stack traces, garbage collection),
//! so a Go program stripped of its symbols (`-ldflags="-s -w"`) still has it, naming every
//! function with its entry. The layout read here is the one of Go's `debug/gosym/pclntab.go`
//! and `runtime/symtab.go` (`pcHeader`, `functab`, `_func`, `moduledata`), little-endian, in
//! the formats of Go 1.16 and later; older tables give nothing. The tables come from any file
//! on the host: every read is bounds-checked, and a malformed table gives nothing, or skips the
//! function it cannot read.

/// A function of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoFunction<'w> {
    pub name: &'w str,
    /// Its entry, as a virtual address of the file.
    pub address: u64,
    /// Up to the next function's entry: the padding after its code is included.
    pub size: u64,
}

/// The table's magic numbers (`internal/abi.PCLnTabMagic`).
const GO116_MAGIC: u32 = 0xFFFF_FFFA;
const GO118_MAGIC: u32 = 0xFFFF_FFF0;
const GO120_MAGIC: u32 = 0xFFFF_FFF1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Go 1.16 and 1.17: entries are pointer-sized absolute addresses.
    Go116,
    /// Go 1.18 and later (1.20's new magic changed nothing read here): entries are u32 offsets
    /// from the start of the Go text, `runtime.text`.
    Go118,
}

/// A table whose header has been read and whose function table lies inside it.
pub struct Pclntab<'a> {
    data: &'a [u8],
    format: Format,
    pointer_size: usize,
    function_count: usize,
    /// `runtime.text` as Go 1.18 to 1.25 record it in the header; 0 from Go 1.26 on, which
    /// keeps it in the moduledata only.
    recorded_text_start: u64,
    /// Where the NUL-terminated function names are, from the table's start.
    names_at: usize,
    /// Where the function table is: `function_count` (entry, `_func` offset) pairs, then the
    /// end of the last function. The `_func` offsets count from here too.
    functab_at: usize,
}

impl<'a> Pclntab<'a> {
    /// The table of `data` (the contents of `.gopclntab`), if its header is one of a known
    /// format and its function table fits in it.
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let format = match u32_at(data, 0)? {
            GO116_MAGIC => Format::Go116,
            GO118_MAGIC | GO120_MAGIC => Format::Go118,
            _ => return None,
        };
        // Two zero bytes, the instruction size quantum, the pointer size: as gosym checks.
        let (padding, quantum, pointer_size) =
            (data.get(4..6)?, *data.get(6)?, usize::from(*data.get(7)?));
        if padding != [0, 0] || ![1, 2, 4].contains(&quantum) || ![4, 8].contains(&pointer_size) {
            return None;
        }
        // Pointer-sized words follow: nfunc, nfiles, (from Go 1.18) textStart, then the offsets
        // of funcnametab, cutab, filetab, pctab and the function table.
        let word = |index: usize| uint_at(data, 8 + index * pointer_size, pointer_size);
        let usize_word = |index: usize| usize::try_from(word(index)?).ok();
        let (recorded_text_start, offsets_from) = match format {
            Format::Go116 => (0, 2),
            Format::Go118 => (word(2)?, 3),
        };
        let table = Self {
            data,
            format,
            pointer_size,
            function_count: usize_word(0)?,
            recorded_text_start,
            names_at: usize_word(offsets_from)?,
            functab_at: usize_word(offsets_from + 4)?,
        };
        let functab_size = table
            .function_count
            .checked_mul(2)?
            .checked_add(1)?
            .checked_mul(table.functab_field_size())?;
        (table.functab_at.checked_add(functab_size)? <= data.len() && table.names_at < data.len())
            .then_some(table)
    }

    /// The address the entries count from: `runtime.text` for Go 1.18 and later, 0 for Go 1.16's
    /// absolute entries. Go 1.26 no longer records it in the header but in the moduledata,
    /// given here as the contents of `.go.module`, with the address of `.gopclntab` it must
    /// point to. (The start of `.text` is no substitute: with external linking, C code
    /// precedes `runtime.text`.)
    pub fn text_start(&self, pclntab_address: u64, moduledata: Option<&[u8]>) -> Option<u64> {
        match self.format {
            Format::Go116 => Some(0),
            Format::Go118 if self.recorded_text_start != 0 => Some(self.recorded_text_start),
            Format::Go118 => self.module_text_start(pclntab_address, moduledata?),
        }
    }

    /// `runtime.text` from the moduledata, which begins with the addresses of the table's
    /// header and of its function names, and holds the first function's entry (`minpc`) two
    /// words before `text`: all three are checked against the table, so that a moduledata of
    /// another layout gives nothing rather than a wrong address.
    fn module_text_start(&self, pclntab_address: u64, moduledata: &[u8]) -> Option<u64> {
        let pointer =
            |index: usize| uint_at(moduledata, index * self.pointer_size, self.pointer_size);
        // pcHeader, then six slices of three words (funcnametab, cutab, filetab, pctab,
        // pclntable, ftab), findfunctab, minpc, maxpc, text.
        const FUNCNAMETAB: usize = 1;
        const MINPC: usize = 1 + 6 * 3 + 1;
        const TEXT: usize = MINPC + 2;
        let text = pointer(TEXT)?;
        let names_address = pclntab_address.checked_add(self.names_at as u64)?;
        let first_entry = text.checked_add(self.entry(0)?)?;
        (pointer(0)? == pclntab_address
            && pointer(FUNCNAMETAB)? == names_address
            && pointer(MINPC)? == first_entry)
            .then_some(text)
    }

    /// The functions named in `wanted`, with entries counted from `text_start`.
    pub fn functions<'w>(&self, text_start: u64, wanted: &[&'w str]) -> Vec<GoFunction<'w>> {
        (0..self.function_count)
            .filter_map(|index| {
                let name_at = self.name_at(index)?;
                let name = *wanted.iter().find(|name| self.is_name_at(name_at, name))?;
                let entry = self.entry(index)?;
                // The table is sorted: a function ends where the next one begins.
                let size = self
                    .entry(index + 1)?
                    .checked_sub(entry)
                    .filter(|&size| size > 0)?;
                Some(GoFunction {
                    name,
                    address: text_start.checked_add(entry)?,
                    size,
                })
            })
            .collect()
    }

    /// The size of an entry and of a `_func` offset in the function table.
    fn functab_field_size(&self) -> usize {
        match self.format {
            Format::Go116 => self.pointer_size,
            Format::Go118 => 4,
        }
    }

    /// The `index`th field of the function table (inside the table: checked by `parse`).
    fn functab_field(&self, index: usize) -> Option<u64> {
        let size = self.functab_field_size();
        uint_at(self.data, self.functab_at + index * size, size)
    }

    /// The entry of the `index`th function; `function_count` gives the end of the last.
    fn entry(&self, index: usize) -> Option<u64> {
        self.functab_field(2 * index)
    }

    /// Where the name of the `index`th function is, read from its `_func`, which begins with
    /// its entry again (checked: a misread table gives nothing) and the offset of its name.
    fn name_at(&self, index: usize) -> Option<usize> {
        let func_offset = usize::try_from(self.functab_field(2 * index + 1)?).ok()?;
        let func_at = self.functab_at.checked_add(func_offset)?;
        let entry_size = self.functab_field_size();
        if uint_at(self.data, func_at, entry_size)? != self.entry(index)? {
            return None;
        }
        let name_offset = u32_at(self.data, func_at.checked_add(entry_size)?)?;
        // An int32 in the `_func`: a negative one is no name.
        if name_offset > i32::MAX as u32 {
            return None;
        }
        self.names_at.checked_add(name_offset as usize)
    }

    /// Whether the NUL-terminated name at `at` is `name`.
    fn is_name_at(&self, at: usize, name: &str) -> bool {
        let Some(end) = at.checked_add(name.len()) else {
            return false;
        };
        self.data.get(at..end) == Some(name.as_bytes()) && self.data.get(end) == Some(&0)
    }
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// A little-endian unsigned integer of `size` bytes, 4 or 8.
fn uint_at(data: &[u8], at: usize, size: usize) -> Option<u64> {
    match size {
        4 => u32_at(data, at).map(u64::from),
        8 => {
            let bytes = data.get(at..at.checked_add(8)?)?;
            Some(u64::from_le_bytes(bytes.try_into().ok()?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRITE: &str = "crypto/tls.(*Conn).Write";
    const READ: &str = "crypto/tls.(*Conn).Read";
    const WANTED: [&str; 2] = [WRITE, READ];

    /// A 64-bit table as Go's linker lays it out: header, function names, function table,
    /// `_func`s (their entry and name offset, then zeroed fields). `functions` are (name,
    /// entry); `end` is the end of the last function.
    fn table(magic: u32, recorded_text_start: u64, functions: &[(&str, u64)], end: u64) -> Vec<u8> {
        let go116 = magic == GO116_MAGIC;
        let field = if go116 { 8 } else { 4 };
        let put = |bytes: &mut Vec<u8>, value: u64, size: usize| {
            bytes.extend_from_slice(&value.to_le_bytes()[..size])
        };
        let header_words = if go116 { 7 } else { 8 };
        let names_at = 8 + header_words * 8;
        let mut names = Vec::new();
        let mut name_offsets = Vec::new();
        for (name, _) in functions {
            name_offsets.push(names.len() as u64);
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        let functab_at = names_at + names.len();
        let func_size = field + 4 + 32;
        let funcs_from = (2 * functions.len() + 1) * field;

        let mut bytes = Vec::new();
        put(&mut bytes, u64::from(magic), 4);
        bytes.extend_from_slice(&[0, 0, 1, 8]);
        put(&mut bytes, functions.len() as u64, 8);
        put(&mut bytes, 0, 8); // nfiles
        if !go116 {
            put(&mut bytes, recorded_text_start, 8);
        }
        put(&mut bytes, names_at as u64, 8);
        for _ in 0..3 {
            // cutab, filetab, pctab: not read.
            put(&mut bytes, functab_at as u64, 8);
        }
        put(&mut bytes, functab_at as u64, 8);
        assert_eq!(bytes.len(), names_at);
        bytes.extend_from_slice(&names);
        for (index, &(_, entry)) in functions.iter().enumerate() {
            put(&mut bytes, entry, field);
            put(&mut bytes, (funcs_from + index * func_size) as u64, field);
        }
        put(&mut bytes, end, field);
        for (&(_, entry), &name_offset) in functions.iter().zip(&name_offsets) {
            put(&mut bytes, entry, field);
            put(&mut bytes, name_offset, 4);
            bytes.extend_from_slice(&[0; 32]);
        }
        bytes
    }

    /// Functions around and between the wanted ones, one named with a wanted name as prefix.
    fn program_functions() -> [(&'static str, u64); 4] {
        [
            ("runtime.main", 0x0),
            (READ, 0x1a0),
            ("crypto/tls.(*Conn).Writer", 0x400),
            (WRITE, 0x520),
        ]
    }

    #[test]
    fn wanted_functions_with_their_sizes_from_the_go_1_20_table() {
        let data = table(GO120_MAGIC, 0x401000, &program_functions(), 0x7e0);
        let table = Pclntab::parse(&data).unwrap();
        let text_start = table.text_start(0x6f0000, None).unwrap();
        assert_eq!(text_start, 0x401000);
        assert_eq!(
            table.functions(text_start, &WANTED),
            [
                GoFunction {
                    name: READ,
                    address: 0x4011a0,
                    size: 0x260
                },
                GoFunction {
                    name: WRITE,
                    address: 0x401520,
                    size: 0x2c0
                },
            ]
        );
        assert_eq!(table.functions(text_start, &["main.main"]), []);
    }

    #[test]
    fn go_1_18_table_reads_as_go_1_20() {
        let go118 = table(GO118_MAGIC, 0x401000, &program_functions(), 0x7e0);
        let go120 = table(GO120_MAGIC, 0x401000, &program_functions(), 0x7e0);
        let functions = |data: &[u8]| {
            let table = Pclntab::parse(data).unwrap();
            table.functions(table.text_start(0, None).unwrap(), &WANTED)
        };
        assert_eq!(functions(&go118), functions(&go120));
        assert_eq!(functions(&go118).len(), 2);
    }

    #[test]
    fn go_1_16_entries_are_absolute() {
        let absolute = program_functions().map(|(name, entry)| (name, 0x401000 + entry));
        let data = table(GO116_MAGIC, 0, &absolute, 0x4017e0);
        let table = Pclntab::parse(&data).unwrap();
        assert_eq!(table.text_start(0x6f0000, None), Some(0));
        let found = table.functions(0, &WANTED);
        assert_eq!(
            found
                .iter()
                .map(|f| (f.name, f.address, f.size))
                .collect::<Vec<_>>(),
            [(READ, 0x4011a0, 0x260), (WRITE, 0x401520, 0x2c0)]
        );
    }

    /// A moduledata (64-bit) as far as `text`: pcHeader, the six slices, findfunctab, minpc,
    /// maxpc, text.
    fn moduledata(pcheader: u64, funcnametab: u64, minpc: u64, text: u64) -> Vec<u8> {
        let mut words = [0u64; 23];
        words[0] = pcheader;
        words[1] = funcnametab;
        words[20] = minpc;
        words[22] = text;
        words.iter().flat_map(|word| word.to_le_bytes()).collect()
    }

    /// Go 1.26 records `runtime.text` in the moduledata only; one that does not point at this
    /// table, or whose first entry disagrees, gives nothing.
    #[test]
    fn go_1_26_text_start_from_the_moduledata() {
        let data = table(GO120_MAGIC, 0, &program_functions(), 0x7e0);
        let table = Pclntab::parse(&data).unwrap();
        let pclntab_address = 0x6fb200;
        let names_address = pclntab_address + 8 + 8 * 8;
        assert_eq!(table.text_start(pclntab_address, None), None);
        let good = moduledata(pclntab_address, names_address, 0x402440, 0x402440);
        assert_eq!(
            table.text_start(pclntab_address, Some(&good)),
            Some(0x402440)
        );
        for wrong in [
            moduledata(pclntab_address + 8, names_address, 0x402440, 0x402440),
            moduledata(pclntab_address, names_address + 8, 0x402440, 0x402440),
            moduledata(pclntab_address, names_address, 0x402460, 0x402440),
        ] {
            assert_eq!(table.text_start(pclntab_address, Some(&wrong)), None);
        }
        assert_eq!(table.text_start(pclntab_address, Some(&good[..170])), None);
    }

    /// Every truncation and every corrupted byte of a table: no panic; a truncated table gives
    /// none but the whole table's functions.
    #[test]
    fn truncated_or_corrupted_tables_give_nothing_wrong() {
        for magic in [GO116_MAGIC, GO120_MAGIC] {
            let whole = table(magic, 0x401000, &program_functions(), 0x7e0);
            let functions = |data: &[u8]| {
                Pclntab::parse(data)
                    .and_then(|table| {
                        let text_start = table.text_start(0x6f0000, None)?;
                        Some(table.functions(text_start, &WANTED))
                    })
                    .unwrap_or_default()
            };
            let expected = functions(&whole);
            assert_eq!(expected.len(), 2);
            for length in 0..whole.len() {
                let found = functions(&whole[..length]);
                assert!(
                    found.iter().all(|f| expected.contains(f)),
                    "{length}: {found:?}"
                );
            }
            for at in 0..whole.len() {
                for value in [0x00, 0x7f, 0x80, 0xff] {
                    let mut corrupted = whole.clone();
                    corrupted[at] = value;
                    functions(&corrupted);
                }
            }
        }
    }

    #[test]
    fn garbage_and_unknown_formats_give_nothing() {
        const GO12_MAGIC: u32 = 0xFFFF_FFFB;
        let mut go12 = table(GO120_MAGIC, 0x401000, &program_functions(), 0x7e0);
        go12[..4].copy_from_slice(&GO12_MAGIC.to_le_bytes());
        assert!(Pclntab::parse(&go12).is_none());
        assert!(Pclntab::parse(&[]).is_none());
        assert!(Pclntab::parse(&[0xff; 4096]).is_none());
        // A function count that would put the table far beyond the data, or overflow.
        for count in [1 << 20, u64::MAX / 2, u64::MAX] {
            let mut huge = table(GO120_MAGIC, 0x401000, &program_functions(), 0x7e0);
            huge[8..16].copy_from_slice(&count.to_le_bytes());
            assert!(Pclntab::parse(&huge).is_none(), "{count}");
        }
    }
}
