//! libFuzzer entry point of the `hybrid_handshake` target (its body: `kata_fuzz::TARGETS`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (kata_fuzz::target("hybrid_handshake")
        .expect("a known target")
        .run)(data)
});
