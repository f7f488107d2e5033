//! libFuzzer entry point of the `image_layer` target (its body: `kata_fuzz::TARGETS`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (kata_fuzz::target("image_layer")
        .expect("a known target")
        .run)(data)
});
