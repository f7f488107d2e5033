//! `shim-ctl check`: can this host run sandboxes with the configuration?

use kata_sandbox::config::{check_host, CheckStatus, HostProbe};

use super::{loader, Options, EXIT_FAILED, EXIT_OK};

/// Prints one line per check and a verdict; fails when a needed check fails.
pub fn run(options: &Options) -> i32 {
    let loaded = match loader(options).load() {
        Ok(loaded) => loaded,
        Err(e) => {
            println!("{:<5} {:<20} {e}", CheckStatus::Fail, "configuration");
            println!("\nNOT READY: the configuration does not load");
            return EXIT_FAILED;
        }
    };
    let checks = check_host(&loaded, &HostProbe::default());
    for c in &checks {
        println!("{:<5} {:<20} {}", c.status, c.name, c.detail);
    }
    for d in &loaded.drop_ins {
        println!(
            "{:<5} {:<20} drop-in {}",
            CheckStatus::Ok,
            "configuration",
            d.display()
        );
    }
    for a in &loaded.annotations_applied {
        println!(
            "{:<5} {:<20} annotation {a} applied",
            CheckStatus::Ok,
            "configuration"
        );
    }
    for w in &loaded.warnings {
        println!("{:<5} {:<20} {w}", CheckStatus::Warning, "configuration");
    }
    let failed = checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .count();
    let warned = checks
        .iter()
        .filter(|c| c.status == CheckStatus::Warning)
        .count()
        + loaded.warnings.len();
    if failed > 0 {
        println!("\nNOT READY: {failed} check(s) failed");
        EXIT_FAILED
    } else {
        println!("\nready ({warned} warning(s))");
        EXIT_OK
    }
}
