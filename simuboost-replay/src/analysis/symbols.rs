//! Block address → guest function, from the guest ELF's symbol table (our own guest, built
//! with symbols; the run keeps a copy as `guest.elf`).

use goblin::elf::{sym, Elf};

/// Errors reading the guest's symbols.
#[derive(Debug, thiserror::Error)]
pub enum SymbolsError {
    /// Not an ELF file goblin can read.
    #[error("the guest image is not a readable ELF file: {0}")]
    Elf(String),
    /// An ELF without function symbols (stripped).
    #[error("the guest image has no function symbols (stripped?)")]
    NoSymbols,
}

/// Function symbols, sorted by address.
#[derive(Clone, Debug, Default)]
pub struct Symbols {
    /// Start, size (0: unknown, up to the next symbol) and name.
    functions: Vec<(u64, u64, String)>,
}

impl Symbols {
    /// Reads the function symbols of an ELF image.
    pub fn from_elf(image: &[u8]) -> Result<Symbols, SymbolsError> {
        let elf = Elf::parse(image).map_err(|e| SymbolsError::Elf(e.to_string()))?;
        let mut functions: Vec<(u64, u64, String)> = elf
            .syms
            .iter()
            .filter(|s| s.st_type() == sym::STT_FUNC && s.st_value != 0)
            .filter_map(|s| {
                let name = elf.strtab.get_at(s.st_name)?;
                // Rust names demangled without their hash: `simuboost_workloads::sort::merge`.
                Some((
                    s.st_value,
                    s.st_size,
                    format!("{:#}", rustc_demangle::demangle(name)),
                ))
            })
            .collect();
        if functions.is_empty() {
            return Err(SymbolsError::NoSymbols);
        }
        functions.sort();
        functions.dedup_by_key(|f| f.0);
        Ok(Symbols { functions })
    }

    /// A symbol table from (start, size, name) triples (tests).
    pub fn from_list(mut functions: Vec<(u64, u64, String)>) -> Symbols {
        functions.sort();
        Symbols { functions }
    }

    /// The function containing `vaddr` and the offset into it. A symbol without a size
    /// extends to the next symbol.
    pub fn lookup(&self, vaddr: u64) -> Option<(&str, u64)> {
        let i = self
            .functions
            .partition_point(|f| f.0 <= vaddr)
            .checked_sub(1)?;
        let (start, size, name) = &self.functions[i];
        let end = if *size > 0 {
            start + size
        } else {
            self.functions.get(i + 1).map_or(u64::MAX, |f| f.0)
        };
        (vaddr < end).then(|| (name.as_str(), vaddr - start))
    }

    /// Number of functions.
    pub fn len(&self) -> usize {
        self.functions.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_the_containing_function() {
        let s = Symbols::from_list(vec![
            (0x1000, 0x20, "a".into()),
            (0x1040, 0, "b".into()),
            (0x1100, 0x10, "c".into()),
        ]);
        assert_eq!(s.lookup(0x1000), Some(("a", 0)));
        assert_eq!(s.lookup(0x101f), Some(("a", 0x1f)));
        assert_eq!(s.lookup(0x1020), None, "past a's size");
        assert_eq!(s.lookup(0x10ff), Some(("b", 0xbf)), "sizeless: up to c");
        assert_eq!(s.lookup(0xfff), None);
        assert_eq!(s.lookup(0x1110), None);
    }

    #[test]
    fn rust_names_are_demangled() {
        let name = "_ZN19simuboost_workloads7pattern10step_pages17h8d8737c310542ef0E";
        assert_eq!(
            format!("{:#}", rustc_demangle::demangle(name)),
            "simuboost_workloads::pattern::step_pages"
        );
    }

    #[test]
    fn a_non_elf_is_an_error() {
        assert!(matches!(
            Symbols::from_elf(b"not an elf"),
            Err(SymbolsError::Elf(_))
        ));
    }
}
