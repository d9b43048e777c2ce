#![no_main]
//! See portwatch_core::internals::fuzz_bpf_kernel.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portwatch_core::internals::fuzz_bpf_kernel(data));
