//! `shim-ctl env`: the effective configuration as TOML.

use super::{loader, Options, EXIT_FAILED, EXIT_OK};

/// Loads the configuration and prints it with its origin; invalid configurations are errors.
pub fn run(options: &Options) -> i32 {
    match loader(options).load() {
        Ok(loaded) => {
            print!("{}", loaded.effective_toml());
            EXIT_OK
        }
        Err(e) => {
            eprintln!("shim-ctl env: {e}");
            EXIT_FAILED
        }
    }
}
