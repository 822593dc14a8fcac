//! GPT: the partition table parser and its re-encoding (`disk::fuzz_gpt`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| disk::fuzz_gpt(data));
