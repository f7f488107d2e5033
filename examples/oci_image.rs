//! Runs a command from a local OCI image tarball (no containerd, no registry).
//!
//! `cargo run -p kata-examples --example oci_image [IMAGE.tar] [ARGS...]`; without arguments it
//! builds a busybox image and runs `cat /etc/os-release || uname -a`.

use kata_examples::{busybox_image, Steps};
use kata_sandbox::{ContainerSpec, Sandbox};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut steps = Steps::new();
    let mut argv = std::env::args().skip(1);
    let image = match argv.next() {
        Some(p) => p.into(),
        None => busybox_image()?,
    };
    let mut args: Vec<String> = argv.collect();
    if args.is_empty() {
        args = vec![
            "sh".into(),
            "-c".into(),
            "echo from the image: $(uname -sm)".into(),
        ];
    }
    steps.done("image ready");
    let sandbox = Sandbox::builder().memory_mib(256).build().await?;
    steps.done("sandbox ready");
    let out = sandbox
        .run(ContainerSpec::from_image(&image).args(args))
        .await;
    steps.done("container ran");
    sandbox.shutdown().await?;
    let out = out?;
    print!("{}", out.stdout_str());
    eprint!("{}", out.stderr_str());
    println!("exit status {}", out.status);
    Ok(())
}
