#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| snp_emu::ovmf::fuzz_measure(data));
