//! libFuzzer entry point of the `vmm_queue` target (its body: `kata_fuzz::TARGETS`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (kata_fuzz::target("vmm_queue").expect("a known target").run)(data)
});
