//! The fuzz entries of the owner iterator's loader (`internals::fuzz_bpf_object` and
//! `fuzz_bpf_kernel`, targets `bpf_object` and `bpf_kernel` in `fuzz/`): everything the
//! loader does with bytes, through the loader's own functions, never a `bpf(2)` call. The
//! object and the kernel's BTF are trusted inputs today (compiled in; read from the kernel),
//! but the parsers are the crate's, and the library must not panic on any input.

use super::btf::{Btf, KIND_FUNC};
use super::load::{ATTACH_FUNC, OBJECT, Object, log_tail};
use super::{RECORD, decode, elf};

/// `bytes` as the loader's object: its sections found ([`elf::Elf`]), its `.BTF` indexed and
/// its `.BTF.ext` relocations read ([`Object::parse`]), then relocated as [`Object::prepare`]
/// does against a second blob: the committed object's `.BTF` (which has every type the
/// program reads, as a kernel's does), and the object's own.
pub(crate) fn fuzz_object(bytes: &[u8]) {
    let Ok(object) = Object::parse(bytes) else { return };
    if let Some(committed) = committed_btf() {
        let _ = object.prepare(committed);
    }
    if let Some(own) = elf::Elf::parse(bytes).and_then(|e| e.section(b".BTF")) {
        let _ = object.prepare(own);
    }
}

/// `bytes` as what the kernel hands the loader and the pass: its BTF (indexed for the committed
/// object's relocations, which are then applied; and indexed plain, then searched), the
/// records of a pass, the verifier's log.
pub(crate) fn fuzz_kernel(bytes: &[u8]) {
    if let Ok(object) = Object::parse(OBJECT) {
        let _ = object.prepare(bytes);
    }
    if let Ok(btf) = Btf::parse(bytes) {
        let _ = btf.find(KIND_FUNC, ATTACH_FUNC);
    }
    for rec in bytes.chunks_exact(RECORD) {
        let _ = decode(rec);
    }
    let _ = log_tail(&String::from_utf8_lossy(bytes));
}

/// The committed object's `.BTF`.
fn committed_btf() -> Option<&'static [u8]> {
    elf::Elf::parse(OBJECT)?.section(b".BTF")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small xorshift: reproducible mutations without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// One to four of what a fuzzer does to an input: flip bits, write a boundary value
    /// (as a byte or a word: sizes, offsets, counts, ids), cut it short, repeat or drop a
    /// run of bytes.
    fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
        const WORDS: [u32; 8] = [0, 1, 7, 8, 0x7fff, 0xffff, 0x7fff_ffff, u32::MAX];
        let mut b = seed.to_vec();
        for _ in 0..1 + rng.below(4) {
            if b.is_empty() {
                break;
            }
            let at = rng.below(b.len());
            match rng.below(6) {
                0 => b[at] ^= 1 << rng.below(8),
                1 => b[at] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)],
                2 => {
                    let word = WORDS[rng.below(WORDS.len())].to_ne_bytes();
                    let end = (at + 4).min(b.len());
                    b[at..end].copy_from_slice(&word[..end - at]);
                }
                3 => b.truncate(at),
                4 => {
                    let run: Vec<u8> = b[at..(at + 1 + rng.below(64)).min(b.len())].to_vec();
                    let to = rng.below(b.len());
                    b.splice(to..to, run);
                }
                _ => {
                    let end = (at + 1 + rng.below(64)).min(b.len());
                    b.drain(at..end);
                }
            }
        }
        b
    }

    /// What `make fuzz` does for longer, as a test: 20 000 mutations of each real input,
    /// through the fuzz entries; any panic fails it.
    #[test]
    fn twenty_thousand_mutations_of_the_real_inputs_do_not_panic() {
        let mut rng = Rng(0x5eed_f0bf);
        let btf = committed_btf().expect("the committed object has a .BTF");
        for _ in 0..20_000 {
            fuzz_object(&mutate(OBJECT, &mut rng));
            fuzz_kernel(&mutate(btf, &mut rng));
        }
        // The unmutated inputs take the whole way: the object relocates against itself.
        let object = Object::parse(OBJECT).unwrap();
        assert!(object.prepare(btf).is_err_and(|e| e.to_string().contains("bpf_iter_task_file")));
        assert!(object.relocated(&Btf::parse(btf).unwrap()).is_ok());
    }
}
