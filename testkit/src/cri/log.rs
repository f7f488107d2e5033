//! Container logs in CRI's format, as containerd's CRI plugin writes them at a container's
//! `log_path`: one line per chunk, `<RFC3339Nano timestamp> <stdout|stderr> <F|P> <text>`
//! (`F` a full line, `P` a partial one continued by the next).

/// One line of a CRI container log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine<'a> {
    /// The time, as written (RFC3339Nano).
    pub timestamp: &'a str,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// Whether the line is partial (`P`), continued by the next one.
    pub partial: bool,
    /// The text.
    pub text: &'a str,
}

/// Parses one line; `None` when it is not in CRI's format.
pub fn parse_line(line: &str) -> Option<LogLine<'_>> {
    let mut parts = line.splitn(4, ' ');
    let (timestamp, stream, tag) = (parts.next()?, parts.next()?, parts.next()?);
    let text = parts.next().unwrap_or_default();
    let partial = match tag {
        "F" => false,
        "P" => true,
        _ => return None,
    };
    if !is_rfc3339_nano(timestamp) || !(stream == "stdout" || stream == "stderr") {
        return None;
    }
    Some(LogLine {
        timestamp,
        stream,
        partial,
        text,
    })
}

/// Whether `ts` is Go's RFC3339Nano (`2006-01-02T15:04:05.999999999Z07:00`): a date, a time,
/// an optional fraction of 1 to 9 digits, `Z` or an offset.
pub fn is_rfc3339_nano(ts: &str) -> bool {
    let b = ts.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let date_time = digits(0..4)
        && at(4, b'-')
        && digits(5..7)
        && at(7, b'-')
        && digits(8..10)
        && at(10, b'T')
        && digits(11..13)
        && at(13, b':')
        && digits(14..16)
        && at(16, b':')
        && digits(17..19);
    if !date_time {
        return false;
    }
    let mut rest = &ts[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let n = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 9 {
            return false;
        }
        rest = &fraction[n..];
    }
    let r = rest.as_bytes();
    rest == "Z"
        || (r.len() == 6
            && (r[0] == b'+' || r[0] == b'-')
            && r[1..3].iter().all(u8::is_ascii_digit)
            && r[3] == b':'
            && r[4..6].iter().all(u8::is_ascii_digit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert!(is_rfc3339_nano("2026-11-30T01:02:03.123456789Z"));
        assert!(is_rfc3339_nano("2026-11-30T01:02:03Z"));
        assert!(is_rfc3339_nano("2026-11-30T01:02:03.5+01:00"));
        assert!(!is_rfc3339_nano("2026-11-30 01:02:03Z"));
        assert!(!is_rfc3339_nano("2026-11-30T01:02:03.Z"));
        assert!(!is_rfc3339_nano("2026-11-30T01:02:03.1234567890Z"));
        assert!(!is_rfc3339_nano("2026-11-30T01:02:03+0100"));
        assert!(!is_rfc3339_nano("stdout"));
    }

    #[test]
    fn lines() {
        assert_eq!(
            parse_line("2026-11-30T01:02:03.1Z stdout F hello world"),
            Some(LogLine {
                timestamp: "2026-11-30T01:02:03.1Z",
                stream: "stdout",
                partial: false,
                text: "hello world",
            })
        );
        assert!(parse_line("2026-11-30T01:02:03.1Z stderr P part").is_some_and(|l| l.partial));
        assert_eq!(
            parse_line("2026-11-30T01:02:03.1Z stdout F").map(|l| l.text),
            Some("")
        );
        assert_eq!(parse_line("2026-11-30T01:02:03.1Z stdin F x"), None);
        assert_eq!(parse_line("2026-11-30T01:02:03.1Z stdout X x"), None);
        assert_eq!(parse_line("hello"), None);
    }
}
