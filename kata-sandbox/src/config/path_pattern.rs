//! glob(3) patterns of the `valid_*_paths` lists, matched as Kata matches them.
//!
//! Kata matches a path against each pattern as a string (the file need not exist): `*` is any
//! run of characters — `/` included, as in Kata —, `?` one character, `[abc]`, `[a-z]` and
//! `[!a-z]` (or `[^a-z]`) a character class, `\` quotes the next character.

/// Whether `path` matches one of `patterns`. An empty list matches nothing.
pub fn path_matches(patterns: &[String], path: &str) -> bool {
    patterns
        .iter()
        .any(|p| glob_match(p.as_bytes(), path.as_bytes()))
}

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
        assert!(m(&["/*"], "/bin/ls"));
        assert!(m(&["/usr/share", "/bin/*"], "/bin/ls"));
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
    }
}
