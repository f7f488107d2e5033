//! Containers from OCI images: unpack (cached) with kata-resource, and turn the image's config
//! into the defaults of the container's process.

use std::path::{Path, PathBuf};

use kata_resource::rootfs::image::{ImageCache, OciImage};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{Process, User};

use crate::error::{Error, Result};

/// The process defaults an image carries.
pub(crate) struct ImageProcess {
    /// The image's `Entrypoint` (kept when the caller gives arguments).
    pub entrypoint: Vec<String>,
    /// The OCI process: `Entrypoint` + `Cmd`, `Env`, `WorkingDir`, `User`.
    pub oci: Process,
}

/// Opens and unpacks an image (or finds it in the cache); returns the rootfs and defaults.
pub(crate) fn unpack(
    path: &Path,
    reference: Option<&str>,
    cache: &Path,
) -> Result<(PathBuf, ImageProcess)> {
    let image = match reference {
        Some(r) => OciImage::open_ref(path, r)?,
        None => OciImage::open(path)?,
    };
    let rootfs = ImageCache::new(cache)?.rootfs(&image)?;
    let process = process_from_config(image.config())?;
    Ok((rootfs, process))
}

fn process_from_config(config: &ImageConfiguration) -> Result<ImageProcess> {
    let mut p = Process::default();
    let c = config.config().clone().unwrap_or_default();
    let entrypoint = c.entrypoint().clone().unwrap_or_default();
    let mut args = entrypoint.clone();
    args.extend(c.cmd().clone().unwrap_or_default());
    p.set_args(Some(args));
    if let Some(env) = c.env() {
        p.set_env(Some(env.clone()));
    }
    if let Some(wd) = c.working_dir().as_ref().filter(|w| !w.is_empty()) {
        p.set_cwd(PathBuf::from(wd));
    }
    if let Some(user) = c.user().as_ref().filter(|u| !u.is_empty()) {
        p.set_user(parse_user(user)?);
    }
    Ok(ImageProcess { entrypoint, oci: p })
}

/// Parses an image's `User` (`uid` or `uid:gid`, numeric).
fn parse_user(user: &str) -> Result<User> {
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    let parse = |s: &str| {
        s.parse::<u32>().map_err(|_| {
            Error::invalid(
                "image config User",
                format!("`{user}`: only numeric uid[:gid] is supported; set the user with ContainerSpec::user"),
            )
        })
    };
    let mut u = User::default();
    u.set_uid(parse(uid)?);
    u.set_gid(if user.contains(':') { parse(gid)? } else { 0 });
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_user_forms() {
        let u = parse_user("1000:100").unwrap();
        assert_eq!((u.uid(), u.gid()), (1000, 100));
        let u = parse_user("7").unwrap();
        assert_eq!((u.uid(), u.gid()), (7, 0));
        assert!(parse_user("nobody")
            .unwrap_err()
            .to_string()
            .contains("User"));
    }
}
