//! libFuzzer entry point of the `config_toml` target (its body: `kata_fuzz::TARGETS`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (kata_fuzz::target("config_toml")
        .expect("a known target")
        .run)(data)
});
