//! libFuzzer entry point of the `path_globs` target (its body: `kata_fuzz::TARGETS`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (kata_fuzz::target("path_globs").expect("a known target").run)(data)
});
