//! Cpuset lists (`0-3,6`): parsed from a container's `linux.resources.cpu.cpus` and `.mems`,
//! joined over the sandbox's containers, written back in the kernel's form.

use std::collections::BTreeSet;

use crate::{Error, Result};

/// A set of CPUs or memory nodes.
pub(crate) type IdSet = BTreeSet<u32>;

/// The most ids a list may name (a guard against `0-4294967295`).
const MAX_IDS: usize = 1 << 16;

/// Parses a cpuset list (`0-3,6`, spaces and an empty list allowed). A malformed list is
/// refused as [`Error::CpusetList`] naming `field`.
pub(crate) fn parse(list: &str, field: &str) -> Result<IdSet> {
    let refuse = |reason: &str| Error::CpusetList {
        field: field.to_owned(),
        value: list.to_owned(),
        reason: reason.to_owned(),
    };
    let mut ids = IdSet::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim(), hi.trim()),
            None => (part, part),
        };
        let lo: u32 = lo.parse().map_err(|_| refuse("not a number or range"))?;
        let hi: u32 = hi.parse().map_err(|_| refuse("not a number or range"))?;
        if lo > hi {
            return Err(refuse("a range runs backwards"));
        }
        if (hi - lo) as usize + ids.len() >= MAX_IDS {
            return Err(refuse("it names too many ids"));
        }
        ids.extend(lo..=hi);
    }
    Ok(ids)
}

/// The kernel's form of a set: ranges joined by commas (`0-3,6`); empty for none.
pub(crate) fn format(ids: &IdSet) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = ids.iter().copied().peekable();
    while let Some(lo) = iter.next() {
        let mut hi = lo;
        while iter.peek() == Some(&(hi + 1)) {
            hi = iter.next().expect("peeked");
        }
        out.push(if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        });
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_in_the_kernel_form() {
        let f = "linux.resources.cpu.cpus";
        assert_eq!(format(&parse("0-3,6", f).unwrap()), "0-3,6");
        assert_eq!(format(&parse(" 6, 0-1 ,2,3 ", f).unwrap()), "0-3,6");
        assert_eq!(format(&parse("", f).unwrap()), "");
        assert_eq!(format(&parse("5", f).unwrap()), "5");
    }

    #[test]
    fn malformed_lists_are_refused_naming_the_field() {
        for bad in ["a", "3-1", "1-", "-1", "0-4294967295", "1,,x"] {
            let err = parse(bad, "linux.resources.cpu.mems").unwrap_err();
            let text = err.to_string();
            assert!(text.contains("linux.resources.cpu.mems"), "{bad}: {text}");
            assert!(text.contains(bad), "{bad}: {text}");
        }
    }
}
