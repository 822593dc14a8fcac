#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| snp::input::fuzz_evidence(data));
