#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| attest::fuzz_parse(data));
