#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| runway_fuzz_targets::token(data));
