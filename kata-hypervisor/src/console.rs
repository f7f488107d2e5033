//! Reading the guest's serial console log.

use std::path::Path;

/// The last `n` lines of a console log file (empty if it cannot be read).
/// Control characters other than tab are dropped so the lines are safe to print.
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            l.chars()
                .filter(|c| !c.is_control() || *c == '\t')
                .collect::<String>()
        })
        .filter(|l| !l.trim().is_empty())
        .collect();
    let skip = lines.len().saturating_sub(n);
    lines[skip..].to_vec()
}

/// The console lines as an error-message suffix: empty when there are none, else a header
/// line and the lines, each on its own line.
pub fn format_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!(
            "\n--- last {} guest console lines ---\n{}",
            lines.len(),
            lines.join("\n")
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_last_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        let text: String = (0..30).map(|i| format!("line {i}\r\n")).collect();
        std::fs::write(&p, text).unwrap();
        let t = super::tail_lines(&p, 20);
        assert_eq!(t.len(), 20);
        assert_eq!(t[0], "line 10");
        assert_eq!(t[19], "line 29");
        assert!(super::tail_lines(&d.path().join("none"), 5).is_empty());
    }
}
