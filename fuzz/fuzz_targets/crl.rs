#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| snp::crl::fuzz_crl(data));
