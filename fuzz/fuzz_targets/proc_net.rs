#![no_main]
//! See portwatch_core::internals::fuzz_proc_net.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portwatch_core::internals::fuzz_proc_net(data));
