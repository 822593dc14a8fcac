//! LUKS2: both header copies and the JSON metadata (`disk::fuzz_parse`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| disk::fuzz_parse(data));
