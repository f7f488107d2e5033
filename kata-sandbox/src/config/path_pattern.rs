//! glob(3) patterns of the `valid_*_paths` lists, matched component by component.
//!
//! A path is matched as a string (the file need not exist), after normalisation: repeated `/`,
//! `.` components and a trailing `/` are dropped. A path with a `..` component never matches,
//! whatever the pattern, and neither does a relative one. The normalised path then matches a
//! pattern when both have the same number of `/`-separated components and each component
//! matches its pattern component, where `*` is any run of characters, `?` one character,
//! `[abc]`, `[a-z]` and `[!a-z]` (or `[^a-z]`) a character class, and `\` quotes the next
//! character.
//!
//! This deliberately deviates from Kata, whose matcher (the `glob` crate's defaults) lets `*`
//! match `/` and takes `..` literally, so `/usr/bin/*` admits `/usr/bin/../../tmp/q` and
//! `/usr/bin/a/b`. Here `*`, `?` and classes never cross a `/` (glob(3)'s `FNM_PATHNAME`), so
//! `/usr/bin/*` admits exactly the names directly in `/usr/bin`. `**` has no special meaning
//! (it is two `*`s in one component): none of Kata's shipped configurations uses it.

use std::borrow::Cow;

/// Whether `path` matches one of `patterns`. An empty list matches nothing; a path that is not
/// absolute or has a `..` component matches nothing.
///
/// ```
/// use kata_sandbox::config::path_matches;
///
/// let allowed = vec!["/usr/bin/qemu-system-*".to_string()];
/// assert!(path_matches(&allowed, "/usr/bin//qemu-system-x86_64"));
/// assert!(!path_matches(&allowed, "/usr/bin/qemu-system-x/../../../tmp/q"));
/// assert!(!path_matches(&allowed, "/usr/bin/qemu-system-x/evil"));
/// ```
pub fn path_matches(patterns: &[String], path: &str) -> bool {
    let Some(path) = normalise(path) else {
        return false;
    };
    patterns
        .iter()
        .any(|pattern| pattern_matches(pattern.as_bytes(), &path))
}

/// The components of an absolute `path` without empty and `.` ones; `None` if `path` is
/// relative or has a `..` component.
fn normalise(path: &str) -> Option<Vec<&[u8]>> {
    let rest = path.strip_prefix('/')?;
    let mut components = Vec::new();
    for component in rest.split('/') {
        match component {
            "" | "." => {}
            ".." => return None,
            c => components.push(c.as_bytes()),
        }
    }
    Some(components)
}

/// Whether the normalised path `components` matches `pattern`, split the same way.
fn pattern_matches(pattern: &[u8], components: &[&[u8]]) -> bool {
    let Some(rest) = pattern.strip_prefix(b"/") else {
        return false; // a relative pattern admits no absolute path
    };
    let pattern_components: Vec<Cow<'_, [u8]>> = split_pattern(rest)
        .into_iter()
        .filter(|c| !c.is_empty() && c.as_ref() != b".")
        .collect();
    pattern_components.len() == components.len()
        && pattern_components
            .iter()
            .zip(components)
            .all(|(p, c)| glob_match(p, c))
}

/// Splits a pattern at the `/`s that separate components; `\/` is an ordinary `/` and cannot
/// occur inside a component, so it splits too (glob(3) with `FNM_PATHNAME` does the same).
fn split_pattern(pattern: &[u8]) -> Vec<Cow<'_, [u8]>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if pattern.get(i + 1) == Some(&b'/') => {
                out.push(Cow::Borrowed(&pattern[start..i]));
                i += 2;
                start = i;
            }
            b'\\' => i += 2,
            b'/' => {
                out.push(Cow::Borrowed(&pattern[start..i]));
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    out.push(Cow::Borrowed(&pattern[start.min(pattern.len())..]));
    out
}

/// glob(3) matching of one component (neither side contains `/`).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative matcher with single-star backtracking: on a mismatch, let the last `*` eat one
    // more character and retry from there.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(pattern, p, text[t]) {
                        if matched {
                            p = next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        // An unclosed `[` is an ordinary character.
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == text[t] {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                c => {
                    if c == text[t] {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[start] == b'['`. Returns whether it
/// matched and the index after the class, or `None` when the class is not closed.
fn class_match(pattern: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(pattern.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *pattern.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&h| h != b']') {
            let hi = pattern[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(patterns: &[&str], path: &str) -> bool {
        let p: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        path_matches(&p, path)
    }

    #[test]
    fn katas_cases() {
        assert!(!m(&[], "/bin/ls"));
        assert!(!m(&["/bin"], "/bin/ls"));
        assert!(!m(&["/bin/*/ls"], "/bin/ls"));
        assert!(m(&["/bin/*"], "/bin/ls"));
        assert!(m(&["/usr/share", "/bin/*"], "/bin/ls"));
        assert!(m(
            &["/usr/bin/qemu-system-x86_64"],
            "/usr/bin/qemu-system-x86_64"
        ));
    }

    #[test]
    fn classes_and_escapes() {
        assert!(m(
            &["/usr/bin/qemu-system-x86_6[0-9]"],
            "/usr/bin/qemu-system-x86_64"
        ));
        assert!(!m(&["/usr/bin/qemu-[!s]*"], "/usr/bin/qemu-system-x86_64"));
        assert!(m(&["/usr/bin/qemu-?ystem*"], "/usr/bin/qemu-system-x86_64"));
        assert!(m(&["/opt/\\*"], "/opt/*"));
        assert!(!m(&["/opt/\\*"], "/opt/x"));
        assert!(m(&["/opt/[]x]"], "/opt/]"));
        assert!(m(&["/a*b*c"], "/aXXbYYc"));
        assert!(!m(&["/a*b*c"], "/aXXbYY"));
        assert!(m(&["/opt/a\\/b"], "/opt/a/b"), "an escaped / separates");
    }

    /// The deviation from Kata: what its matcher admitted and this one refuses.
    #[test]
    fn wildcards_do_not_cross_slashes_and_dot_dot_never_matches() {
        let refused = [
            // (pattern, path)
            ("/usr/bin/*", "/usr/bin/../../tmp/q"),
            ("/usr/bin/*", "/usr/bin/a/b"),
            ("/usr/bin/*", "/usr/bin/a/../../../tmp/q"),
            ("/usr/bin/*", "/usr/bin/.."),
            ("/usr/bin/*", "/usr/bin/"),
            ("/usr/bin/*", "/usr/bin"),
            ("/usr/bin/qemu-*", "/usr/bin/qemu-x/../../../tmp/q"),
            ("/usr/bin/qemu-*", "/usr/bin/qemu-/tmp/q"),
            ("/usr/bin/qemu-?", "/usr/bin/qemu-/"),
            ("/usr/bin/qemu-[!a]x", "/usr/bin/qemu-/x"),
            ("/*", "/bin/ls"),
            ("/opt/kata/bin/qemu", "/opt/kata/bin/../bin/qemu"),
            ("/opt/kata/bin/qemu", "/opt/kata/bin/qemu/.."),
            ("/opt/kata/bin/**", "/opt/kata/bin/a/b"),
            ("/usr/bin/*", "usr/bin/qemu"),
            ("usr/bin/*", "usr/bin/qemu"),
            ("*", "/usr/bin/qemu"),
        ];
        for (pattern, path) in refused {
            assert!(!m(&[pattern], path), "{pattern} admitted {path}");
        }
    }

    #[test]
    fn paths_and_patterns_are_normalised() {
        let admitted = [
            ("/usr/bin/*", "/usr/bin//qemu"),
            ("/usr/bin/*", "/usr/bin/./qemu"),
            ("/usr/bin/*", "//usr/bin/qemu/"),
            ("/usr/bin/*", "/usr/bin/.hidden"),
            ("/usr//bin/./*", "/usr/bin/qemu"),
            ("/usr/bin/*/", "/usr/bin/qemu"),
            ("/opt/kata/bin/**", "/opt/kata/bin/qemu"),
            ("/usr/*/qemu", "/usr/bin/qemu"),
            ("/", "/"),
        ];
        for (pattern, path) in admitted {
            assert!(m(&[pattern], path), "{pattern} refused {path}");
        }
    }
}
