//! libFuzzer entry point of the `annotations` target (its body: `kata_fuzz::TARGETS`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (kata_fuzz::target("annotations")
        .expect("a known target")
        .run)(data)
});
