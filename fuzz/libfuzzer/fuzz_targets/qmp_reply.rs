//! libFuzzer entry point of the `qmp_reply` target (its body: `kata_fuzz::TARGETS`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (kata_fuzz::target("qmp_reply").expect("a known target").run)(data)
});
