#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| snp::cert::fuzz_cert(data));
