//! `shim-ctl check`: can this host run sandboxes with the configuration? It also lists the
//! settings that are parsed but have no effect in this build.

use kata_sandbox::config::{check_host, CheckStatus, HostProbe, KataConfig};
use kata_sandbox::SandboxBuilder;

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
    // The built-in VMM's probe is reported, never failed on (a configuration naming
    // [hypervisor.dragonball] fails in its own checks above); it decides the default VMM.
    let builtin = kata_sandbox::config::probe_builtin_vmm();
    let status = if builtin.usable {
        CheckStatus::Ok
    } else {
        CheckStatus::NotNeeded
    };
    println!("{status:<5} {:<20} {}", "built-in VMM", builtin.reason);
    let default = kata_sandbox::config::default_hypervisor();
    println!(
        "{:<5} {:<20} {} where no configuration names one: {}",
        CheckStatus::Ok,
        "default hypervisor",
        default.kind,
        default.reason
    );
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
    let mut failed = checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .count();
    let inert = match inert_settings(&loaded.config) {
        Ok(inert) => inert,
        Err(e) => {
            // Said already when a check failed (a refused setting); otherwise it is news.
            if failed == 0 {
                println!("{:<5} {:<20} {e}", CheckStatus::Fail, "sandbox");
                failed += 1;
            }
            Vec::new()
        }
    };
    for setting in &inert {
        println!(
            "{:<5} {:<20} {setting} (no effect)",
            CheckStatus::Warning,
            "inert setting"
        );
    }
    let warned = checks
        .iter()
        .filter(|c| c.status == CheckStatus::Warning)
        .count()
        + loaded.warnings.len()
        + inert.len();
    if failed > 0 {
        println!("\nNOT READY: {failed} check(s) failed");
        EXIT_FAILED
    } else {
        println!("\nready ({warned} warning(s))");
        EXIT_OK
    }
}

/// The settings of `config` that are parsed but have no effect in this build
/// (`SandboxConfig::inert_settings`: `[runtime]`, the active `[hypervisor.*]`, `[agent.kata]`),
/// or why no sandbox could be made from it.
fn inert_settings(config: &KataConfig) -> Result<Vec<String>, String> {
    SandboxBuilder::from_kata_config(config.clone())
        .and_then(SandboxBuilder::finish)
        .map(|c| c.inert_settings())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_without_effect_are_listed_from_every_section() {
        let mut config = KataConfig::parse(
            r#"
[hypervisor.qemu]
rx_rate_limiter_max_rate = 1000
[agent.kata]
container_pipe_size = 65536
[runtime]
enable_pprof = true
"#,
        )
        .unwrap();
        config.adjust();
        let inert = inert_settings(&config).unwrap();
        for needle in [
            "[hypervisor.qemu] rx_rate_limiter_max_rate = 1000: ",
            "[agent.kata] container_pipe_size = 65536: ",
            "[runtime] enable_pprof = true: ",
        ] {
            assert!(
                inert.iter().any(|l| l.starts_with(needle)),
                "{needle}: {inert:?}"
            );
        }
        let refused =
            KataConfig::parse("[hypervisor.qemu]\nguest_hook_path = \"/hooks\"\n").unwrap();
        let e = inert_settings(&refused).unwrap_err();
        assert!(e.contains("guest_hook_path"), "{e}");
    }
}
