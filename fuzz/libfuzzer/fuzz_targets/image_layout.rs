//! libFuzzer entry point of the `image_layout` target (its body: `kata_fuzz::TARGETS`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (kata_fuzz::target("image_layout")
        .expect("a known target")
        .run)(data)
});
