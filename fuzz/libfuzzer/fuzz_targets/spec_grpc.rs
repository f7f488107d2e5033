//! libFuzzer entry point of the `spec_grpc` target (its body: `kata_fuzz::TARGETS`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (kata_fuzz::target("spec_grpc").expect("a known target").run)(data)
});
