//! Just enough BTF for the owner iterator: find a few kernel types by name and the byte
//! offset of a member, and apply the object's CO-RE field-offset relocations with them.
//!
//! A general loader parses every one of the kernel's ~100 000 types into owned values (aya:
//! ~9 ms, then ~30 ms of relocation), which is ten times a whole small listing. Here the
//! kernel's BTF is indexed in one pass over its bytes (type id → where its record starts),
//! and only the types named by the object are ever decoded. Bytes in, values out: no I/O, no
//! panics on any input (every read is bounds-checked), tested on the committed object and the
//! running kernel.

use std::borrow::Cow;

use crate::bytes::{u16_at, u32_at, usize_at};

/// What is wrong with a BTF blob, a `.BTF.ext` or a relocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BtfError(pub(crate) Cow<'static, str>);

impl std::fmt::Display for BtfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(what: impl Into<Cow<'static, str>>) -> Result<T, BtfError> {
    Err(BtfError(what.into()))
}

const BTF_MAGIC: u16 = 0xeb9f;

// Type kinds (BTF_KIND_* in <linux/btf.h>).
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
pub(crate) const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One BTF blob (the kernel's, or an object's `.BTF`), indexed by type id.
pub(crate) struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Where each type's record starts in `types`; index 0 is id 1 (id 0 is `void`).
    starts: Vec<u32>,
    /// Structs, unions and functions with a name given to [`Btf::parse_naming`]:
    /// (name, kind, id), the first of each name and kind among the types naming that name's
    /// first copy in the strings (the kernel's strings have one copy of each).
    named: Vec<(Vec<u8>, u32, u32)>,
}

/// A type's common header.
#[derive(Debug, Clone, Copy)]
struct Head {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// Size, or the referenced type id.
    size_type: u32,
    /// Where the kind-specific data (members, …) starts in `types`.
    data: usize,
}

impl<'a> Btf<'a> {
    /// Indexes a native-endian BTF blob.
    pub(crate) fn parse(blob: &'a [u8]) -> Result<Btf<'a>, BtfError> {
        Btf::parse_naming(blob, &[])
    }

    /// Indexes a native-endian BTF blob, noting on the way the structs, unions and functions
    /// named `names`, so that [`Btf::find`] needs no second pass. Each name's offset in the
    /// strings is found first (a vectorised search; the kernel's strings are deduplicated),
    /// so the pass compares numbers, not strings.
    pub(crate) fn parse_naming(blob: &'a [u8], names: &[&[u8]]) -> Result<Btf<'a>, BtfError> {
        if u16_at(blob, 0) != Some(BTF_MAGIC) {
            return err("not BTF (bad magic, or another byte order)");
        }
        let field = |off| usize_at(blob, off).ok_or(BtfError("BTF header cut short".into()));
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (field(4)?, field(8)?, field(12)?, field(16)?, field(20)?);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            blob.get(start..start.checked_add(len)?)
        };
        let (Some(types), Some(strings)) = (section(type_off, type_len), section(str_off, str_len))
        else {
            return err("BTF sections outside the blob");
        };
        // (offset of the name in the strings, which name): its first place only. The kernel's
        // strings are deduplicated, and a type naming another copy is still found, by
        // `find`'s own pass; looking on to the end for more cost ~0.5 ms.
        let offsets: Vec<(u32, usize)> = names
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let needle = [b"\0", *name, b"\0"].concat();
                let at = memchr::memmem::find(strings, &needle)?;
                Some((u32::try_from(at + 1).ok()?, i))
            })
            .collect();
        let mut named = Vec::new();
        let mut starts = Vec::with_capacity(types.len() / 24);
        let mut at = 0;
        while at < types.len() {
            let start = u32::try_from(at).map_err(|_| BtfError("BTF too large".into()))?;
            let head = head_at(types, at).ok_or(BtfError("BTF type cut short".into()))?;
            at = head.data + extra_len(head).ok_or(BtfError("unknown BTF kind".into()))?;
            starts.push(start);
            if matches!(head.kind, KIND_STRUCT | KIND_UNION | KIND_FUNC)
                && let Some(&(_, i)) = offsets.iter().find(|(off, _)| *off == head.name_off)
                && !named
                    .iter()
                    .any(|(n, k, _): &(Vec<u8>, u32, u32)| n == names[i] && *k == head.kind)
            {
                named.push((names[i].to_vec(), head.kind, starts.len() as u32));
            }
        }
        if at != types.len() {
            return err("BTF type cut short");
        }
        Ok(Btf { types, strings, starts, named })
    }

    fn head(&self, id: u32) -> Option<Head> {
        let start = *self.starts.get((id as usize).checked_sub(1)?)?;
        head_at(self.types, start as usize)
    }

    /// The NUL-terminated string at `off` in the string section (empty when out of range).
    pub(crate) fn str_at(&self, off: u32) -> &'a [u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())]
    }

    /// The id of the first type of `kind` named `name`: noted while indexing when the name
    /// was given to [`Btf::parse_naming`], else looked for.
    pub(crate) fn find(&self, kind: u32, name: &[u8]) -> Option<u32> {
        if let Some(&(_, _, id)) = self.named.iter().find(|(n, k, _)| n == name && *k == kind) {
            return Some(id);
        }
        (1..=self.starts.len() as u32).find(|&id| {
            self.head(id).is_some_and(|h| h.kind == kind && self.str_at(h.name_off) == name)
        })
    }

    /// The names of the types the CO-RE relocations `relos` start from (what the kernel's
    /// BTF must be asked for).
    pub(crate) fn relocated_names(&self, relos: &[CoreRelo]) -> Vec<&'a [u8]> {
        let mut names: Vec<&[u8]> = relos
            .iter()
            .filter_map(|r| self.resolve(r.type_id))
            .map(|(_, h)| essential(self.str_at(h.name_off)))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Option<(u32, Head)> {
        for _ in 0..32 {
            let h = self.head(id)?;
            match h.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = h.size_type
                }
                _ => return Some((id, h)),
            }
        }
        None
    }

    /// Member `i` of the struct or union `id`: (name, type id, bit offset).
    fn member(&self, h: Head, i: usize) -> Option<(&'a [u8], u32, u32)> {
        if !(h.kind == KIND_STRUCT || h.kind == KIND_UNION) || i >= h.vlen {
            return None;
        }
        let at = h.data + i * 12;
        let raw = u32_at(self.types, at + 8)?;
        // With kind_flag, the high 8 bits are a bitfield's size.
        let bits = if h.kind_flag { raw & 0x00ff_ffff } else { raw };
        Some((self.str_at(u32_at(self.types, at)?), u32_at(self.types, at + 4)?, bits))
    }

    /// Bit offset of the member named `name` in struct or union `id`, looking through
    /// anonymous struct and union members as C does; with the member's type id.
    fn member_named(&self, id: u32, name: &[u8], depth: u32) -> Option<(u32, u32)> {
        let (_, h) = self.resolve(id)?;
        for i in 0..h.vlen {
            let (m_name, m_type, bits) = self.member(h, i)?;
            if m_name == name {
                return Some((bits, m_type));
            }
            if m_name.is_empty()
                && depth < 8
                && let Some((inner, t)) = self.member_named(m_type, name, depth + 1)
            {
                return Some((bits.checked_add(inner)?, t));
            }
        }
        None
    }
}

fn head_at(types: &[u8], at: usize) -> Option<Head> {
    let info = u32_at(types, at + 4)?;
    Some(Head {
        name_off: u32_at(types, at)?,
        kind: (info >> 24) & 0x1f,
        vlen: (info & 0xffff) as usize,
        kind_flag: info >> 31 == 1,
        size_type: u32_at(types, at + 8)?,
        data: at + 12,
    })
}

/// Bytes of kind-specific data after a type's 12-byte header; `None` for a kind this code
/// does not know (a newer kernel's: then nothing after it can be found either).
fn extra_len(h: Head) -> Option<usize> {
    Some(match h.kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => h.vlen * 12,
        KIND_ENUM | KIND_FUNC_PROTO => h.vlen * 8,
        0 => return None,
        k if k <= KIND_TYPE_TAG => 0, // PTR, FWD, TYPEDEF, qualifiers, FUNC, FLOAT, TYPE_TAG
        _ => return None,
    })
}

/// `BPF_CORE_FIELD_BYTE_OFFSET`, the only relocation kind the owner iterator uses.
const FIELD_BYTE_OFFSET: u32 = 0;

/// One CO-RE relocation of a program section (`struct bpf_core_relo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CoreRelo {
    /// Byte offset of the instruction in its section.
    pub(crate) insn_off: u32,
    /// The local (object) type the access starts from.
    pub(crate) type_id: u32,
    /// The access string, `"0:1:2"`, in the object's BTF strings.
    pub(crate) access_str_off: u32,
    /// `BPF_CORE_*`.
    pub(crate) kind: u32,
}

/// The CO-RE relocations `.BTF.ext` lists for the section named `section`.
pub(crate) fn core_relos(
    ext: &[u8],
    local: &Btf<'_>,
    section: &[u8],
) -> Result<Vec<CoreRelo>, BtfError> {
    if u16_at(ext, 0) != Some(BTF_MAGIC) {
        return err(".BTF.ext: bad magic");
    }
    let hdr_len = usize_at(ext, 4).ok_or(BtfError(".BTF.ext cut short".into()))?;
    // The relocation fields were added after func and line info: an older header has none.
    if hdr_len < 32 {
        return Ok(Vec::new());
    }
    let (Some(off), Some(len)) = (usize_at(ext, 24), usize_at(ext, 28)) else {
        return err(".BTF.ext cut short");
    };
    let sec = hdr_len
        .checked_add(off)
        .and_then(|s| ext.get(s..s.checked_add(len)?))
        .ok_or(BtfError(".BTF.ext relocations outside the section".into()))?;
    let Some(rec_size) = usize_at(sec, 0).filter(|s| *s >= 16) else {
        return if sec.is_empty() { Ok(Vec::new()) } else { err(".BTF.ext: bad record size") };
    };
    let mut at = 4;
    let mut out = Vec::new();
    while at < sec.len() {
        let (Some(name), Some(n)) = (u32_at(sec, at), usize_at(sec, at + 4)) else {
            return err(".BTF.ext relocations cut short");
        };
        at += 8;
        for _ in 0..n {
            let rec = sec.get(at..at + rec_size).ok_or(BtfError(".BTF.ext cut short".into()))?;
            if local.str_at(name) == section {
                out.push(CoreRelo {
                    insn_off: u32_at(rec, 0).unwrap_or(0),
                    type_id: u32_at(rec, 4).unwrap_or(0),
                    access_str_off: u32_at(rec, 8).unwrap_or(0),
                    kind: u32_at(rec, 12).unwrap_or(0),
                });
            }
            at += rec_size;
        }
    }
    Ok(out)
}

/// A type's name without a CO-RE "flavour" suffix (`task_struct___old` → `task_struct`).
fn essential(name: &[u8]) -> &[u8] {
    match name.windows(3).position(|w| w == b"___") {
        Some(i) => &name[..i],
        None => name,
    }
}

/// Where one relocated field is in the kernel: its byte offset from the start of the access.
pub(crate) fn field_offset(
    relo: &CoreRelo,
    local: &Btf<'_>,
    kernel: &Btf<'_>,
) -> Result<u32, BtfError> {
    if relo.kind != FIELD_BYTE_OFFSET {
        return err(format!("CO-RE relocation kind {} is not supported", relo.kind));
    }
    let access = std::str::from_utf8(local.str_at(relo.access_str_off))
        .map_err(|_| BtfError("CO-RE access string is not text".into()))?;
    let mut steps = access.split(':').map(|s| s.parse::<usize>());
    // The first index steps over the root pointer as an array: only 0 is an access through it.
    if steps.next() != Some(Ok(0)) {
        return err(format!("CO-RE access {access} is not supported"));
    }
    let (mut l_id, mut l_head) =
        local.resolve(relo.type_id).ok_or(BtfError("CO-RE type not in the object".into()))?;
    let name = essential(local.str_at(l_head.name_off));
    let k_id = [KIND_STRUCT, KIND_UNION]
        .into_iter()
        .find_map(|k| kernel.find(k, name))
        .ok_or_else(|| BtfError(format!("no struct {} in the kernel", show(name)).into()))?;
    let (mut k_id, mut bits) = (k_id, 0u32);
    for step in steps {
        let i = step.map_err(|_| BtfError(format!("bad CO-RE access {access}").into()))?;
        let (m_name, m_type, _) = local
            .member(l_head, i)
            .ok_or_else(|| BtfError(format!("CO-RE access {access} leaves its type").into()))?;
        if m_name.is_empty() {
            return err(format!("CO-RE access {access} through an anonymous member"));
        }
        let (k_bits, k_type) = kernel.member_named(k_id, m_name, 0).ok_or_else(|| {
            BtfError(format!("no field {}.{} in the kernel", show(name), show(m_name)).into())
        })?;
        bits = bits
            .checked_add(k_bits)
            .ok_or_else(|| BtfError(format!("CO-RE access {access} overflows").into()))?;
        k_id = k_type;
        (l_id, l_head) = local.resolve(m_type).ok_or(BtfError("bad object BTF".into()))?;
    }
    let _ = l_id;
    if bits % 8 != 0 {
        return err(format!("{} is a bitfield in this kernel", show(name)));
    }
    Ok(bits / 8)
}

fn show(name: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob whose strings hold `task_struct` twice, its one struct named by the second
    /// copy: the first place is all the index notes, and `find` still finds the struct.
    #[test]
    fn a_type_naming_a_second_copy_of_a_string_is_found() {
        let strings = b"\0task_struct\0task_struct\0";
        let second = 13u32;
        let mut types = Vec::new();
        types.extend(second.to_ne_bytes()); // name_off
        types.extend((KIND_STRUCT << 24).to_ne_bytes()); // info: a struct, no members
        types.extend(8u32.to_ne_bytes()); // size
        let mut blob = Vec::new();
        blob.extend(BTF_MAGIC.to_ne_bytes());
        blob.extend([1, 0]); // version, flags
        for field in [24, 0, types.len(), types.len(), strings.len()] {
            blob.extend((field as u32).to_ne_bytes()); // hdr_len, type_off/len, str_off/len
        }
        blob.extend(&types);
        blob.extend(strings);
        let btf = Btf::parse_naming(&blob, &[b"task_struct"]).unwrap();
        assert!(btf.named.is_empty(), "the first copy names no type");
        assert_eq!(btf.find(KIND_STRUCT, b"task_struct"), Some(1));
        assert_eq!(btf.find(KIND_UNION, b"task_struct"), None);
    }
}
