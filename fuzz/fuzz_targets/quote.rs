#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tpm_quote::fuzz_parse(data));
