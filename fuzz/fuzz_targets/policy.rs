#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| snp::policy::fuzz_policy(data));
