#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| guest_agent::wire::fuzz_read(data));
