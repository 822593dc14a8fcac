#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| snp::certtable::fuzz_parse(data));
