//! Secure Boot inputs: PE images and their Authenticode signatures, signature lists,
//! authenticated updates, SBAT, OVMF variable images, variable store JSON, FAT
//! filesystems and event-log claims (`boot::fuzz_parse`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| boot::fuzz_parse(data));
