//! The `kata_agent` events a test binary's sandboxes emit (the agent's log lines re-emitted
//! by the host), captured by a global subscriber: the log task runs on the runtime's threads.
//! [`install`] also keeps the usual fmt output (`KATA_RS_LOG`, default `warn`).

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

/// One `kata_agent` event: sandbox id, level, message.
pub type Seen = (String, tracing::Level, String);

fn seen() -> &'static Mutex<Vec<Seen>> {
    static SEEN: OnceLock<Mutex<Vec<Seen>>> = OnceLock::new();
    SEEN.get_or_init(|| Mutex::new(Vec::new()))
}

/// Installs the capturing subscriber (once per process; later calls do nothing).
pub fn install() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("KATA_RS_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_filter(filter))
            .with(Capture);
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
    });
}

struct Capture;

#[derive(Default)]
struct Fields {
    sandbox_id: String,
    message: String,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "sandbox_id" {
            self.sandbox_id = value.to_string();
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "sandbox_id" => self.sandbox_id = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "kata_agent" {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        seen()
            .lock()
            .unwrap()
            .push((f.sandbox_id, *event.metadata().level(), f.message));
    }
}

/// Waits up to `limit` until sandbox `id` re-emitted `count` agent lines containing
/// `needle`; returns them, or an error listing what was seen.
pub async fn wait_for(
    id: &str,
    needle: &str,
    count: usize,
    limit: Duration,
) -> Result<Vec<Seen>, String> {
    let t0 = std::time::Instant::now();
    loop {
        let lines: Vec<Seen> = seen()
            .lock()
            .unwrap()
            .iter()
            .filter(|(sb, _, m)| sb == id && m.contains(needle))
            .cloned()
            .collect();
        if lines.len() >= count {
            return Ok(lines);
        }
        if t0.elapsed() > limit {
            let all: Vec<Seen> = seen().lock().unwrap().clone();
            return Err(format!(
                "no agent line {needle:?} (x{count}) for sandbox {id} after {limit:?}; seen: {all:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
