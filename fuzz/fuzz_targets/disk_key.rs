//! The `opencvm-key-release` LUKS2 token a pre-encrypted disk carries
//! (`host::pre_encryption::fuzz_token`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| host::pre_encryption::fuzz_token(data));
