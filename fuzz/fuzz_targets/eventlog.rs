#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tcg_eventlog::fuzz_parse(data));
