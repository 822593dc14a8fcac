#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| snp::report::fuzz_report(data));
