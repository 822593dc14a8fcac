#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vtpm::fuzz_parse(data));
