#![no_main]
// The body is livegate::fuzz's, shared with the corpus replay in tests/fuzz.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    livegate::fuzz::sei_units(data);
});
