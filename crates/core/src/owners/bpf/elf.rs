//! The sections of a 64-bit little- or big-endian ELF relocatable object, by name: enough to
//! take the owner iterator's instructions and BTF out of `owners.bpf.o`. Pure, bounds-checked.

use crate::bytes::{u16_at, u32_at, usize64_at};

/// The sections of an ELF64 object in this machine's byte order.
pub(crate) struct Elf<'a> {
    bytes: &'a [u8],
    /// (name, offset, size) of each section.
    sections: Vec<(&'a [u8], usize, usize)>,
}

impl<'a> Elf<'a> {
    /// Reads the section headers; `None` when this is no ELF64 object of this byte order.
    pub(crate) fn parse(bytes: &'a [u8]) -> Option<Elf<'a>> {
        let native = if cfg!(target_endian = "little") { 1 } else { 2 };
        if bytes.get(..4)? != b"\x7fELF"
            || bytes.get(4) != Some(&2)
            || bytes.get(5) != Some(&native)
        {
            return None;
        }
        let shoff = usize64_at(bytes, 0x28)?;
        let (entsize, count, names) = (
            usize::from(u16_at(bytes, 0x3a)?),
            usize::from(u16_at(bytes, 0x3c)?),
            usize::from(u16_at(bytes, 0x3e)?),
        );
        if entsize < 64 {
            return None;
        }
        let header = |i: usize| -> Option<(u32, usize, usize)> {
            let h = bytes.get(shoff.checked_add(i.checked_mul(entsize)?)?..)?;
            Some((u32_at(h, 0)?, usize64_at(h, 24)?, usize64_at(h, 32)?))
        };
        let (_, str_off, str_size) = header(names)?;
        let strtab = bytes.get(str_off..str_off.checked_add(str_size)?)?;
        let mut sections = Vec::with_capacity(count);
        for i in 0..count {
            let (name, off, size) = header(i)?;
            let rest = strtab.get(name as usize..)?;
            let name = &rest[..rest.iter().position(|b| *b == 0)?];
            sections.push((name, off, size));
        }
        Some(Elf { bytes, sections })
    }

    /// The contents of the section named `name`.
    pub(crate) fn section(&self, name: &[u8]) -> Option<&'a [u8]> {
        let &(_, off, size) = self.sections.iter().find(|(n, ..)| *n == name)?;
        self.bytes.get(off..off.checked_add(size)?)
    }

    /// Whether a section named `name` exists.
    pub(crate) fn has(&self, name: &[u8]) -> bool {
        self.sections.iter().any(|(n, ..)| *n == name)
    }
}
