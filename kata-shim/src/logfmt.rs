//! The shim's log in logfmt, as containerd's own: one line per event,
//! `time="…" level=info msg="…" key=value …`, so that containerd, which copies a serving shim's
//! `log` fifo to its own stderr (containerd 1.6: `openShimLog`, then `io.Copy(os.Stderr, …)`),
//! puts lines into its log (`journalctl -u containerd`) that read like its own and can be
//! filtered by field: `sandbox=<id>` on every line of a shim (one shim per sandbox), the
//! event's and its spans' fields (`sandbox_id`, `container_id`, `exec_id`, …) after it.
//!
//! The layout follows logrus' text formatter, which containerd and Kata's Go shim use: `time`,
//! `level` (`trace`, `debug`, `info`, `warning`, `error`), `msg` first, then the other fields
//! sorted by key; a value is bare when it is made of ASCII letters, digits and `-._/@^+`, else
//! quoted. Quoted values escape `"` and `\`, line breaks, tabs, every control character and
//! the Unicode line separators and bidirectional overrides ([`quote`]): a guest's log line
//! re-emitted by the shim (the agent's log, hostile input) cannot end the line, start a forged
//! one or add fields of its own. Keys are the code's field names, reduced to `[A-Za-z0-9_.-]`.
//!
//! [`Logfmt`] is the event formatter and [`LogfmtFields`] the field formatter of a
//! `tracing_subscriber::fmt` layer ([`layer`]).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// The fields every line starts with, in this order; an event's field of the same name is
/// written as `fields.<name>` (as logrus does).
const RESERVED: [&str; 3] = ["time", "level", "msg"];

/// The event formatter: a logfmt line per event, with the process-wide fields it was given.
#[derive(Debug, Clone, Default)]
pub struct Logfmt {
    fixed: Vec<(String, String)>,
}

impl Logfmt {
    /// A formatter with no process-wide fields.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a field written on every line (an event's or span's field of that name wins).
    ///
    /// ```
    /// let f = kata_shim::logfmt::Logfmt::new().field("sandbox", "sb1").field("pid", 42);
    /// ```
    pub fn field(mut self, key: &str, value: impl fmt::Display) -> Self {
        self.fixed.push((clean_key(key), value.to_string()));
        self
    }

    /// The line for one event: `level`, `message` (the event's `message` field), `target`,
    /// the event's other fields and its spans' (innermost first, each encoded as
    /// [`LogfmtFields`] stores them), at time `time`. Ends with a newline.
    fn line(
        &self,
        time: &str,
        level: &Level,
        target: &str,
        event: Vec<(String, String)>,
        spans: &[&str],
    ) -> String {
        let mut msg = String::new();
        let mut fields: BTreeMap<String, String> = BTreeMap::new();
        for (key, value) in event {
            if key == "message" {
                msg = value;
                continue;
            }
            let key = if RESERVED.contains(&key.as_str()) {
                format!("fields.{key}")
            } else {
                key
            };
            fields.insert(key, quote(&value));
        }
        for stored in spans {
            for (key, encoded) in stored.lines().filter_map(|l| l.split_once('=')) {
                let key = if RESERVED.contains(&key) {
                    format!("fields.{key}")
                } else {
                    key.to_string()
                };
                fields.entry(key).or_insert_with(|| encoded.to_string());
            }
        }
        for (key, value) in &self.fixed {
            fields.entry(key.clone()).or_insert_with(|| quote(value));
        }
        fields
            .entry("source".into())
            .or_insert_with(|| quote(target));
        let mut out = format!(
            "time={} level={} msg={}",
            quote(time),
            level_name(level),
            quote(&msg)
        );
        for (key, value) in fields {
            let _ = write!(out, " {key}={value}");
        }
        out.push('\n');
        out
    }
}

/// logrus' level names.
fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warning",
        Level::ERROR => "error",
    }
}

impl<S> FormatEvent<S, LogfmtFields> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, LogfmtFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        let mut visitor = Collect::default();
        event.record(&mut visitor);
        let mut spans = Vec::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                let ext = span.extensions();
                if let Some(f) = ext.get::<FormattedFields<LogfmtFields>>() {
                    spans.push(f.fields.clone());
                }
            }
        }
        let spans: Vec<&str> = spans.iter().map(String::as_str).collect();
        let meta = event.metadata();
        writer.write_str(&self.line(&time, meta.level(), meta.target(), visitor.pairs, &spans))
    }
}

/// The field formatter: a span's fields are kept as `key=<encoded value>` lines (an encoded
/// value holds no line break), which [`Logfmt`] merges into each event's line.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogfmtFields;

impl<'writer> FormatFields<'writer> for LogfmtFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = Collect::default();
        fields.record(&mut visitor);
        // A span's later record of a key goes first: the first line of a key is read.
        for (key, value) in visitor.pairs.into_iter().rev() {
            let key = if key == "message" {
                "span.message".into()
            } else {
                key
            };
            writeln!(writer, "{key}={}", quote(&value))?;
        }
        Ok(())
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut added = String::new();
        self.format_fields(Writer::new(&mut added), fields)?;
        current.fields.insert_str(0, &added);
        Ok(())
    }
}

/// A `tracing_subscriber::fmt` layer writing logfmt lines to `writer`, with `fixed`'s fields.
pub fn layer<S, W>(fixed: Logfmt, writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .fmt_fields(LogfmtFields)
        .event_format(fixed)
        .with_writer(writer)
}

/// Collects an event's or span's fields as text, in order.
#[derive(Default)]
struct Collect {
    pairs: Vec<(String, String)>,
}

impl Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.pairs
            .push((clean_key(field.name()), value.to_string()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.pairs
            .push((clean_key(field.name()), value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.pairs
            .push((clean_key(field.name()), format!("{value:?}")));
    }
}

/// A key as logfmt allows it: `[A-Za-z0-9_.-]`, anything else `_`; never empty.
fn clean_key(key: &str) -> String {
    let key: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if key.is_empty() {
        "_".into()
    } else {
        key
    }
}

/// Characters a quoted value must not carry as they are: they would break the line, or make
/// a terminal or viewer show something else than the bytes (line and paragraph separators,
/// bidirectional embeddings, overrides and isolates).
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        || c == '\u{feff}'
}

/// A value as logfmt writes it: bare when it is non-empty and made of ASCII letters, digits
/// and `-._/@^+` (logrus' rule), else in double quotes with `"`, `\`, `\n`, `\r`, `\t`
/// escaped as Go's `strconv.Quote` does and every other control or invisible
/// formatting character as `\u00XX`.
///
/// ```
/// use kata_shim::logfmt::quote;
/// assert_eq!(quote("sb-1"), "sb-1");
/// assert_eq!(quote("a b"), "\"a b\"");
/// assert_eq!(quote("x\" level=error\nforged"), r#""x\" level=error\nforged""#);
/// ```
pub fn quote(value: &str) -> String {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._/@^+".contains(c));
    if bare {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if must_escape(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Splits one logfmt line into its pairs (a reader as containerd's tooling reads them).
    fn parse(line: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut chars = line.chars().peekable();
        loop {
            while chars.peek() == Some(&' ') {
                chars.next();
            }
            let mut key = String::new();
            for c in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if key.is_empty() {
                return out;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some('n') => value.push('\n'),
                            Some('r') => value.push('\r'),
                            Some('t') => value.push('\t'),
                            Some('u') => {
                                let hex: String = chars.by_ref().take(4).collect();
                                value.push(
                                    char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap(),
                                );
                            }
                            Some(c) => value.push(c),
                            None => break,
                        },
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ' ' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
            out.push((key, value));
        }
    }

    #[test]
    fn values_are_bare_or_quoted_and_escaped() {
        assert_eq!(quote("abc-1.2_x/y@z^+"), "abc-1.2_x/y@z^+");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("a=b"), "\"a=b\"");
        assert_eq!(quote("2026-11-30T08:00:00Z"), "\"2026-11-30T08:00:00Z\"");
        assert_eq!(quote(r"C:\path"), r#""C:\\path""#);
        assert_eq!(quote("tab\there"), r#""tab\there""#);
        assert_eq!(quote("\x1b[31mred"), r#""\u001b[31mred""#);
        assert_eq!(quote("nul\0"), r#""nul\u0000""#);
        assert_eq!(quote("\u{85}next"), r#""\u0085next""#);
        assert_eq!(quote("a\u{2028}b\u{202e}c"), r#""a\u2028b\u202ec""#);
        // Printable non-ASCII stays as it is.
        assert_eq!(quote("grüße"), "\"grüße\"");
    }

    #[test]
    fn keys_are_reduced_to_what_logfmt_allows() {
        assert_eq!(clean_key("sandbox_id"), "sandbox_id");
        assert_eq!(clean_key("log.target"), "log.target");
        assert_eq!(clean_key("a b=\"c\n"), "a_b__c_");
        assert_eq!(clean_key(""), "_");
    }

    #[test]
    fn a_hostile_guest_line_stays_one_line_and_forges_no_field() {
        let hostile = "ok\" level=error sandbox=evil\nt=1 level=info msg=\"forged\r\x1b[2K";
        let f = Logfmt::new().field("sandbox", "sb1");
        let line = f.line(
            "2026-11-30T08:00:00.000000Z",
            &Level::INFO,
            "kata_agent",
            vec![
                ("message".into(), hostile.into()),
                ("sandbox_id".into(), "sb1".into()),
            ],
            &[],
        );
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.ends_with('\n') && !line.contains('\r') && !line.contains('\x1b'));
        let pairs = parse(line.trim_end());
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["time", "level", "msg", "sandbox", "sandbox_id", "source"]
        );
        assert_eq!(pairs[1].1, "info");
        assert_eq!(pairs[2].1, hostile, "the message reads back as it was");
        assert_eq!(pairs[3].1, "sb1");
        assert_eq!(pairs[5].1, "kata_agent");
    }

    #[test]
    fn event_fields_win_over_spans_and_spans_over_fixed_fields() {
        let f = Logfmt::new().field("sandbox", "fixed").field("pid", 7);
        let line = f.line(
            "t",
            &Level::WARN,
            "kata_shim::service",
            vec![
                ("message".into(), "created".into()),
                ("exec_id".into(), "e1".into()),
                ("time".into(), "evil".into()),
            ],
            &[
                "container_id=inner\nexec_id=span\n",
                "container_id=outer\nsandbox=from-span\n",
            ],
        );
        assert_eq!(
            line,
            "time=t level=warning msg=created container_id=inner exec_id=e1 fields.time=evil pid=7 sandbox=from-span source=kata_shim::service\n"
                .replace("kata_shim::service", "\"kata_shim::service\"")
        );
    }

    /// A writer the tests read back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_layer_writes_span_ids_and_the_fixed_fields() {
        use tracing_subscriber::layer::SubscriberExt;
        let buf = Buffer::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::registry()
            .with(layer(Logfmt::new().field("sandbox", "sb1"), move || {
                writer.clone()
            }));
        tracing::subscriber::with_default(subscriber, || {
            let span =
                tracing::info_span!("exec", container_id = "c1", exec_id = tracing::field::Empty);
            span.record("exec_id", "e\"2");
            let _g = span.enter();
            tracing::info!(pid = 12, "started \"sh\"");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let pairs: BTreeMap<String, String> = parse(text.trim_end()).into_iter().collect();
        assert_eq!(pairs["msg"], "started \"sh\"");
        assert_eq!(pairs["container_id"], "c1");
        assert_eq!(pairs["exec_id"], "e\"2");
        assert_eq!(pairs["sandbox"], "sb1");
        assert_eq!(pairs["pid"], "12");
        assert_eq!(pairs["level"], "info");
        assert!(
            text.starts_with("time=\"") && pairs["time"].ends_with('Z'),
            "{text}"
        );
    }
}
