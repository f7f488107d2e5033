//! Prometheus text (exposition format 0.0.4): the answer of `GetMetrics`, checked at the edge.
//!
//! The guest's agent answers `GetMetrics` with its figures as Prometheus text, as Kata's agent
//! does. The text comes from the guest, so the host never passes it on as it is: [`parse`]
//! reads it line by line into [`Line`]s, and [`GuestMetrics`] keeps only well-formed lines of
//! the guest's own families (`kata_guest_*`, `kata_agent_*`), within a bound, and writes them
//! out again. A guest cannot add a family the host reports (`kata_shim_*`, ...), break the
//! format of what follows it, or make the answer grow without end.
//!
//! [`MetricsText`] writes the format (both sides use it).
//!
//! ```
//! use kata_agent_client::api::metrics::{parse, Line, MetricKind, MetricsText};
//!
//! let mut text = MetricsText::new();
//! text.family("kata_guest_load", MetricKind::Gauge, "Load average.")
//!     .sample(&[("period", "1m")], 0.5);
//! let text = text.finish();
//! assert_eq!(
//!     parse(&text).unwrap()[2],
//!     Line::Sample {
//!         name: "kata_guest_load".into(),
//!         labels: vec![("period".into(), "1m".into())],
//!         value: 0.5,
//!     }
//! );
//! ```

use std::fmt::Write as _;

/// The guest families the host accepts: every other name in a `GetMetrics` answer is dropped.
pub const GUEST_PREFIXES: &[&str] = &["kata_guest_", "kata_agent_"];

/// At most this many bytes of a `GetMetrics` answer are read; the rest is dropped.
pub const MAX_GUEST_BYTES: usize = 1 << 20;

/// At most this many lines of a `GetMetrics` answer are kept.
pub const MAX_GUEST_LINES: usize = 20_000;

/// The `Content-Type` of Prometheus text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type (`# TYPE` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only ever grows (until its process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// No type given.
    Untyped,
}

impl MetricKind {
    /// The word of the `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Untyped => "untyped",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "counter" => Some(MetricKind::Counter),
            "gauge" => Some(MetricKind::Gauge),
            "untyped" => Some(MetricKind::Untyped),
            _ => None,
        }
    }
}

/// Writes Prometheus text: a family's `# HELP` and `# TYPE` lines, then its samples.
#[derive(Debug, Default)]
pub struct MetricsText {
    out: String,
    family: String,
}

impl MetricsText {
    /// An empty text.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts family `name` (its `# HELP` and `# TYPE` lines); the samples that follow are
    /// its. `name` must be a valid metric name (checked in debug builds).
    pub fn family(&mut self, name: &str, kind: MetricKind, help: &str) -> &mut Self {
        debug_assert!(valid_name(name), "invalid metric name {name:?}");
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        self.family = name.to_string();
        self
    }

    /// A sample of the current family with these labels (values escaped here).
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let name = self.family.clone();
        write_sample(&mut self.out, &name, labels, value);
        self
    }

    /// Appends lines written elsewhere (another [`MetricsText`]'s, or a [`GuestMetrics`]').
    pub fn append(&mut self, text: &str) -> &mut Self {
        self.out.push_str(text);
        if !self.out.is_empty() && !self.out.ends_with('\n') {
            self.out.push('\n');
        }
        self
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

fn write_sample<K: AsRef<str>, V: AsRef<str>>(
    out: &mut String,
    name: &str,
    labels: &[(K, V)],
    value: f64,
) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            debug_assert!(
                valid_label_name(k.as_ref()),
                "invalid label {:?}",
                k.as_ref()
            );
            let _ = write!(out, "{}=\"{}\"", k.as_ref(), escape_label(v.as_ref()));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", format_value(value));
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Whether `name` is a Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Whether `name` is a Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`).
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One line of Prometheus text.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// `# HELP name text`.
    Help {
        /// The family.
        name: String,
        /// Its description (unescaped).
        text: String,
    },
    /// `# TYPE name kind`.
    Type {
        /// The family.
        name: String,
        /// Its type.
        kind: MetricKind,
    },
    /// `name{label="value",...} value`.
    Sample {
        /// The metric name.
        name: String,
        /// Its labels, in order, values unescaped.
        labels: Vec<(String, String)>,
        /// The value.
        value: f64,
    },
}

impl Line {
    /// The metric (family) name the line is about.
    pub fn name(&self) -> &str {
        match self {
            Line::Help { name, .. } | Line::Type { name, .. } | Line::Sample { name, .. } => name,
        }
    }

    /// The line written out again (without its newline).
    pub fn render(&self) -> String {
        match self {
            Line::Help { name, text } => format!(
                "# HELP {name} {}",
                text.replace('\\', "\\\\").replace('\n', "\\n")
            ),
            Line::Type { name, kind } => format!("# TYPE {name} {}", kind.as_str()),
            Line::Sample {
                name,
                labels,
                value,
            } => {
                let mut out = String::new();
                write_sample(&mut out, name, labels, *value);
                out.pop();
                out
            }
        }
    }
}

/// A line that is not Prometheus text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metrics text line {line}: {reason}: {text:?}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: &'static str,
    /// The line (at most 120 characters of it).
    pub text: String,
}

/// Reads Prometheus text: every non-empty line must be `# HELP`, `# TYPE`, another comment
/// (skipped) or a sample (`name{labels} value [timestamp]`; the timestamp is dropped).
pub fn parse(text: &str) -> Result<Vec<Line>, ParseError> {
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let err = |reason| ParseError {
            line: i + 1,
            reason,
            text: raw.chars().take(120).collect(),
        };
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start();
            let mut words = comment.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(name), rest) => {
                    if !valid_name(name) {
                        return Err(err("invalid metric name in HELP"));
                    }
                    lines.push(Line::Help {
                        name: name.to_string(),
                        text: rest
                            .unwrap_or("")
                            .replace("\\n", "\n")
                            .replace("\\\\", "\\"),
                    });
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !valid_name(name) {
                        return Err(err("invalid metric name in TYPE"));
                    }
                    let kind = MetricKind::parse(kind.trim())
                        .ok_or_else(|| err("TYPE is not counter, gauge or untyped"))?;
                    lines.push(Line::Type {
                        name: name.to_string(),
                        kind,
                    });
                }
                (Some("TYPE"), _, _) => return Err(err("TYPE without a name and a type")),
                _ => {}
            }
            continue;
        }
        lines.push(parse_sample(line).map_err(err)?);
    }
    Ok(lines)
}

fn parse_sample(line: &str) -> Result<Line, &'static str> {
    let name_end = line
        .find(['{', ' ', '\t'])
        .ok_or("a sample without a value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err("invalid metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut body) = rest.strip_prefix('{') {
        loop {
            body = body.trim_start();
            if let Some(after) = body.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = body.find('=').ok_or("a label without '='")?;
            let key = body[..eq].trim();
            if !valid_label_name(key) {
                return Err("invalid label name");
            }
            let mut chars = body[eq + 1..].trim_start().char_indices();
            let value_text = body[eq + 1..].trim_start();
            if !matches!(chars.next(), Some((_, '"'))) {
                return Err("a label value that is not quoted");
            }
            let mut value = String::new();
            let mut end = None;
            while let Some((j, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        _ => return Err("a bad escape in a label value"),
                    },
                    '"' => {
                        end = Some(j + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end.ok_or("an unterminated label value")?;
            labels.push((key.to_string(), value));
            body = value_text[end..].trim_start();
            body = body.strip_prefix(',').unwrap_or(body);
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("a sample without a value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse::<f64>()
            .map_err(|_| "a value that is not a number")?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| "a timestamp that is not an integer")?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp");
    }
    Ok(Line::Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Adds label `key="value"` in front of every sample's labels (an aggregator's `sandbox_id`).
pub fn with_label(lines: &[Line], key: &str, value: &str) -> String {
    let mut out = String::new();
    for line in lines {
        match line {
            Line::Sample {
                name,
                labels,
                value: v,
            } => {
                let mut all = vec![(key.to_string(), value.to_string())];
                all.extend(labels.iter().filter(|(k, _)| k != key).cloned());
                write_sample(&mut out, name, &all, *v);
            }
            other => {
                out.push_str(&other.render());
                out.push('\n');
            }
        }
    }
    out
}

/// The guest's figures from `GetMetrics`: only well-formed lines of the guest's families
/// ([`GUEST_PREFIXES`]), at most [`MAX_GUEST_LINES`] from the first [`MAX_GUEST_BYTES`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestMetrics {
    lines: Vec<Line>,
    dropped: usize,
}

impl GuestMetrics {
    /// Checks the guest's text: a line that does not parse, names another family or is past
    /// the bounds is dropped (and counted).
    pub fn from_guest_text(text: &str) -> Self {
        let mut text = text;
        let mut dropped = 0;
        if text.len() > MAX_GUEST_BYTES {
            let mut end = MAX_GUEST_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let cut = &text[..end];
            let end = cut.rfind('\n').map_or(0, |i| i + 1);
            dropped += text[end..].lines().count();
            text = &text[..end];
        }
        let mut lines = Vec::new();
        for raw in text.lines() {
            match parse(raw) {
                Ok(parsed) => {
                    for line in parsed {
                        let ours = GUEST_PREFIXES.iter().any(|p| line.name().starts_with(p));
                        if ours && lines.len() < MAX_GUEST_LINES {
                            lines.push(line);
                        } else {
                            dropped += 1;
                        }
                    }
                }
                Err(_) => dropped += 1,
            }
        }
        GuestMetrics { lines, dropped }
    }

    /// The lines kept.
    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// How many lines of the guest's answer were dropped.
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// The kept lines as Prometheus text.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            out.push_str(&line.render());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_text_parses_back() {
        let mut t = MetricsText::new();
        t.family(
            "kata_guest_meminfo",
            MetricKind::Gauge,
            "Memory, from /proc/meminfo.",
        )
        .sample(&[("item", "MemTotal")], 2.0e9)
        .sample(&[("item", "odd \"q\" \\ \n")], 1.0);
        t.family("kata_agent_up", MetricKind::Gauge, "1")
            .sample(&[], 1.0);
        let text = t.finish();
        let lines = parse(&text).unwrap();
        assert_eq!(lines.len(), 7, "{text}");
        assert_eq!(
            lines[3],
            Line::Sample {
                name: "kata_guest_meminfo".into(),
                labels: vec![("item".into(), "odd \"q\" \\ \n".into())],
                value: 1.0
            }
        );
        assert_eq!(lines[6].render(), "kata_agent_up 1");
        assert_eq!(
            lines[2].render(),
            "kata_guest_meminfo{item=\"MemTotal\"} 2000000000"
        );
    }

    #[test]
    fn bad_lines_are_errors_naming_the_line() {
        for (text, reason) in [
            ("9bad 1", "invalid metric name"),
            ("ok{a=1} 1", "a label value that is not quoted"),
            ("ok{a=\"x} 1", "an unterminated label value"),
            ("ok{a=\"x\"} one", "a value that is not a number"),
            ("ok", "a sample without a value"),
            (
                "# TYPE ok histogramish",
                "TYPE is not counter, gauge or untyped",
            ),
            ("ok 1 2 3", "text after the timestamp"),
        ] {
            let e = parse(&format!("# HELP ok fine\n{text}\n")).unwrap_err();
            assert_eq!((e.line, e.reason), (2, reason), "{text}");
        }
        assert!(parse("# just a comment\n\nok{a=\"1\",b=\"2\",} 3 1700000000\n").is_ok());
    }

    #[test]
    fn a_guest_cannot_add_host_families_or_break_the_format() {
        let hostile = "kata_guest_load{period=\"1m\"} 0.5\n\
                       kata_shim_threads 9999\n\
                       # TYPE kata_hypervisor_threads gauge\n\
                       kata_guest_x{a=\"unterminated} 1\n\
                       garbage line here\n\
                       kata_agent_up 1\n";
        let m = GuestMetrics::from_guest_text(hostile);
        assert_eq!(m.dropped(), 4);
        assert_eq!(
            m.to_text(),
            "kata_guest_load{period=\"1m\"} 0.5\nkata_agent_up 1\n"
        );
    }

    #[test]
    fn a_guest_answer_is_bounded() {
        let line = "kata_guest_x 1\n";
        let huge = line.repeat(MAX_GUEST_BYTES / line.len() + 1000);
        let m = GuestMetrics::from_guest_text(&huge);
        assert_eq!(m.lines().len(), MAX_GUEST_LINES);
        assert!(m.dropped() > 1000);
    }

    #[test]
    fn with_label_puts_the_label_first() {
        let lines = parse("# TYPE a gauge\na{x=\"1\"} 2\nb 3\n").unwrap();
        assert_eq!(
            with_label(&lines, "sandbox_id", "s1"),
            "# TYPE a gauge\na{sandbox_id=\"s1\",x=\"1\"} 2\nb{sandbox_id=\"s1\"} 3\n"
        );
    }
}
