#![no_main]
//! See portwatch_core::internals::fuzz_proc_pid.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portwatch_core::internals::fuzz_proc_pid(data));
