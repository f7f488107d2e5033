//! Building an L2 sandbox past a fault of the emulator under it.
//!
//! Nested SVM under TCG now and then resets or hangs an L2 inside its firmware, before our
//! kernel, agent or VMM code ran ([`kata_lab::protocol::l2_reset_in_firmware`] tells that
//! error apart). Every lab case that boots L2 builds through [`past_firmware`], which builds
//! once more after such an error, at most [`TRIES`] times in all, and says so on the console.
//! The same for a built-in VMM's L2 that shut down in its kernel's first second
//! ([`kata_lab::protocol::l2_shut_down_in_early_boot`]).

use std::fmt::Display;
use std::future::Future;

/// How many builds of one sandbox at most.
pub(crate) const TRIES: usize = 3;

/// `build()`, again after an error of an L2 lost in its firmware (at most [`TRIES`] builds in
/// all); any other result is returned as it came.
pub(crate) async fn past_firmware<T, E, F, Fut>(build: F) -> Result<T, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    past(TRIES, kata_lab::protocol::l2_lost_before_our_code, build)
        .await
        .0
}

/// `build()`, again after an error that `lost` (given the error's text with its causes) calls
/// an L2 lost before our code, at most `tries` builds in all; any other result is returned as
/// it came. Also returns how many builds were made again. [`past_firmware`] is this with the
/// lab's rule; a mode that knows more about its L2s (src/density.rs) passes its own.
pub(crate) async fn past<T, E, F, Fut>(
    tries: usize,
    lost: impl Fn(&str) -> bool,
    mut build: F,
) -> (Result<T, E>, usize)
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut rebuilt = 0;
    loop {
        match build().await {
            Err(e) if rebuilt + 1 < tries && lost(&format!("{e:#}")) => {
                say_again(&e);
                rebuilt += 1;
            }
            other => return (other, rebuilt),
        }
    }
}

/// `builder`'s sandbox within 300 s, built through [`past_firmware`]: the one way a lab case
/// boots an L2 sandbox from a builder.
pub(crate) async fn build_sandbox(
    builder: &kata_sandbox::SandboxBuilder,
) -> anyhow::Result<kata_sandbox::Sandbox> {
    past_firmware(|| async {
        match tokio::time::timeout(BUILD_TIMEOUT, builder.clone().build()).await {
            Ok(r) => r.map_err(anyhow::Error::new),
            Err(_) => Err(anyhow::anyhow!("no sandbox after {BUILD_TIMEOUT:?}")),
        }
    })
    .await
}

/// How long one build of an L2 sandbox may take.
pub(crate) const BUILD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// [`past_firmware`] for a build that blocks and whose error `lost` judges itself (a `ctr run`
/// reads its stderr: [`kata_lab::protocol::l2_lost_in_ctr`]). `build` cleans up after a
/// failed try itself.
pub(crate) fn past_firmware_blocking<T, E, F>(
    lost: impl Fn(&E) -> bool,
    mut build: F,
) -> Result<T, E>
where
    E: Display,
    F: FnMut() -> Result<T, E>,
{
    let mut rebuilt = 0;
    loop {
        match build() {
            Err(e) if rebuilt + 1 < TRIES && lost(&e) => {
                say_again(&e);
                rebuilt += 1;
            }
            other => return other,
        }
    }
}

/// The console line saying a build is made once more after `e`.
fn say_again(e: &dyn Display) {
    println!(
        "kata-lab: L2 reset or hung inside its firmware, or shut down in its kernel's first \
         second ({e:#}); building it once more"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const RESET: &str = "the sandbox did not start: the VM exited (exit code 0)";

    #[test]
    fn a_firmware_reset_is_built_again_at_most_twice() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let calls = Cell::new(0);
        let r: Result<(), String> = rt.block_on(past_firmware(|| {
            calls.set(calls.get() + 1);
            async { Err(RESET.to_string()) }
        }));
        assert_eq!(r.unwrap_err(), RESET);
        assert_eq!(calls.get(), TRIES);

        calls.set(0);
        let r: Result<u8, String> = rt.block_on(past_firmware(|| {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                match n {
                    1 => Err(RESET.to_string()),
                    _ => Ok(7),
                }
            }
        }));
        assert_eq!((r, calls.get()), (Ok(7), 2));
    }

    #[test]
    fn a_blocking_build_is_made_again_only_after_a_lost_l2() {
        let calls = Cell::new(0);
        let lost = |e: &String| e == RESET;
        let r: Result<u8, String> = past_firmware_blocking(lost, || {
            calls.set(calls.get() + 1);
            Err(RESET.to_string())
        });
        assert_eq!((r, calls.get()), (Err(RESET.to_string()), TRIES));
        calls.set(0);
        let r: Result<u8, String> = past_firmware_blocking(lost, || {
            calls.set(calls.get() + 1);
            match calls.get() {
                1 => Err(RESET.to_string()),
                _ => Ok(7),
            }
        });
        assert_eq!((r, calls.get()), (Ok(7), 2));
        calls.set(0);
        let r: Result<u8, String> = past_firmware_blocking(lost, || {
            calls.set(calls.get() + 1);
            Err("the VM exited (exit code 1)".to_string())
        });
        assert_eq!((r.is_err(), calls.get()), (true, 1));
    }

    #[test]
    fn any_other_error_is_returned_at_once() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let calls = Cell::new(0);
        let r: Result<(), String> = rt.block_on(past_firmware(|| {
            calls.set(calls.get() + 1);
            async { Err("the VM exited (exit code 1)".to_string()) }
        }));
        assert!(r.is_err());
        assert_eq!(calls.get(), 1);
    }
}
