//! Reading fixed-size values out of untrusted bytes (the owner iterator's object, the
//! kernel's BTF, records of the BPF programs, `getdents64` output): every read
//! bounds-checked, `None` past the end, so a short or hostile blob is an error upstream and
//! never a panic. Native byte order only: all of these are in the running machine's order
//! (the ELF and BTF headers are checked for it before anything else is read).

/// The `N` bytes at `off` in `b`.
pub(crate) fn array_at<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

/// The native-endian `u16` at `off` in `b`.
pub(crate) fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    array_at(b, off).map(u16::from_ne_bytes)
}

/// The native-endian `u32` at `off` in `b`.
pub(crate) fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    array_at(b, off).map(u32::from_ne_bytes)
}

/// The native-endian `u64` at `off` in `b`.
pub(crate) fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    array_at(b, off).map(u64::from_ne_bytes)
}

/// A native-endian `u32` at `off` in `b` as a size or offset.
pub(crate) fn usize_at(b: &[u8], off: usize) -> Option<usize> {
    u32_at(b, off).and_then(|v| usize::try_from(v).ok())
}

/// A native-endian `u64` at `off` in `b` as a size or offset (`None` where it does not fit).
pub(crate) fn usize64_at(b: &[u8], off: usize) -> Option<usize> {
    u64_at(b, off).and_then(|v| usize::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_bounds_and_none_past_the_end() {
        let b: Vec<u8> = (1..=10).collect();
        assert_eq!(u16_at(&b, 0), Some(u16::from_ne_bytes([1, 2])));
        assert_eq!(u32_at(&b, 6), Some(u32::from_ne_bytes([7, 8, 9, 10])));
        assert_eq!(u64_at(&b, 2), Some(u64::from_ne_bytes([3, 4, 5, 6, 7, 8, 9, 10])));
        assert_eq!(array_at::<2>(&b, 8), Some([9, 10]));
        assert_eq!(u32_at(&b, 7), None, "one byte short");
        assert_eq!(u64_at(&b, 3), None);
        assert_eq!(u16_at(&b, 10), None);
        assert_eq!(u16_at(&b, usize::MAX), None, "an offset that overflows");
        assert_eq!(usize64_at(&b, usize::MAX - 3), None);
        assert_eq!(usize_at(&[], 0), None);
    }
}
