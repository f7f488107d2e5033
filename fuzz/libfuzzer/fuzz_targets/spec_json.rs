//! libFuzzer entry point of the `spec_json` target (its body: `kata_fuzz::TARGETS`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (kata_fuzz::target("spec_json").expect("a known target").run)(data)
});
