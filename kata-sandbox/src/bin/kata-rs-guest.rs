//! `kata-rs-guest`: builds the guest image kata-sandbox boots by default, for a program that
//! depends on kata-sandbox from crates.io and has no checkout of kata-rs.
//!
//! It runs what `BUILD_GUEST_COMMAND` says: a shallow clone of kata-rs (or `--source DIR`, a
//! checkout you have), then `make setup guest` in it, which installs the Debian packages the
//! build needs and writes the kernel, the initramfs and `guest/manifest.json` into
//! `$KATA_RS_CACHE` (default `/var/cache/kata-rs`), where every sandbox looks first. Run it as
//! root (it installs packages and writes the cache); `--print` only prints the commands.
//!
//! ```text
//! cargo install kata-sandbox --bin kata-rs-guest
//! sudo env "PATH=$PATH" kata-rs-guest
//! ```

use std::path::PathBuf;
use std::process::{Command, ExitCode};

const REPOSITORY: &str = "https://github.com/kata-rs/kata-rs";

const USAGE: &str = "usage: kata-rs-guest [--source DIR] [--print]
  Builds kata-rs' guest image (kernel + initramfs with the agent) into $KATA_RS_CACHE
  (default /var/cache/kata-rs): a clone of kata-rs, then `make setup guest` in it (as root).
  --source DIR  use this kata-rs checkout instead of cloning one
  --print       print the commands and run nothing";

/// The commands, as argument vectors: a clone unless a checkout is given, then the build.
fn plan(source: Option<PathBuf>, cache: &std::path::Path) -> (PathBuf, Vec<Vec<String>>) {
    let mut steps = Vec::new();
    let dir = match source {
        Some(dir) => dir,
        None => {
            let dir = cache.join("src").join("kata-rs");
            if !dir.join("Makefile").is_file() {
                steps.push(vec![
                    "git".into(),
                    "clone".into(),
                    "--depth".into(),
                    "1".into(),
                    REPOSITORY.into(),
                    dir.display().to_string(),
                ]);
            }
            dir
        }
    };
    steps.push(vec![
        "make".into(),
        "-C".into(),
        dir.display().to_string(),
        "setup".into(),
        "guest".into(),
    ]);
    (dir, steps)
}

fn main() -> ExitCode {
    let mut source = None;
    let mut print = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--print" => print = true,
            "--source" => match args.next() {
                Some(dir) => source = Some(PathBuf::from(dir)),
                None => {
                    eprintln!("kata-rs-guest: --source needs a directory\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("kata-rs-guest: unexpected argument `{other}`\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(dir) = &source {
        if !dir.join("guest").join("build.sh").is_file() {
            eprintln!(
                "kata-rs-guest: {} is not a kata-rs checkout (no guest/build.sh)",
                dir.display()
            );
            return ExitCode::from(2);
        }
    }
    let cache = kata_hypervisor::config::cache_dir();
    let (_, steps) = plan(source, &cache);
    for step in &steps {
        println!("+ {}", step.join(" "));
        if print {
            continue;
        }
        match Command::new(&step[0]).args(&step[1..]).status() {
            Ok(s) if s.success() => {}
            Ok(s) => {
                eprintln!("kata-rs-guest: `{}` failed ({s})", step.join(" "));
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("kata-rs-guest: cannot run {}: {e} (install it)", step[0]);
                return ExitCode::FAILURE;
            }
        }
    }
    if !print {
        println!(
            "guest image ready: {}",
            kata_hypervisor::GuestManifest::default_path().display()
        );
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_then_the_build_or_the_build_of_a_given_checkout() {
        let cache = tempfile::tempdir().unwrap();
        let (dir, steps) = plan(None, cache.path());
        assert_eq!(dir, cache.path().join("src/kata-rs"));
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0][..2], ["git", "clone"]);
        assert_eq!(steps[1][3..], ["setup", "guest"]);
        // A clone already there is reused.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Makefile"), "").unwrap();
        assert_eq!(plan(None, cache.path()).1.len(), 1);
        let (dir, steps) = plan(Some("/src/kata-rs".into()), cache.path());
        assert_eq!(dir, PathBuf::from("/src/kata-rs"));
        assert_eq!(steps, [["make", "-C", "/src/kata-rs", "setup", "guest"]]);
    }
}
