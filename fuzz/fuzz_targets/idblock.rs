#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| snp_emu::idblock::fuzz_parse(data));
