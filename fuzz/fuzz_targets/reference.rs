//! Fuzz target: see `bungeo_imagestore::fuzzing::reference` for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bungeo_imagestore::fuzzing::reference(data);
});
