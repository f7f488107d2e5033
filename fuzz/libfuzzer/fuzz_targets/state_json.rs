//! libFuzzer entry point of the `state_json` target (its body: `kata_fuzz::TARGETS`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (kata_fuzz::target("state_json").expect("a known target").run)(data)
});
