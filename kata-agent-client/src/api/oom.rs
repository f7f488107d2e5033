//! OOM kills as a stream of container ids ([`OomEvents`]).
//!
//! The protocol has one long-poll call, `GetOOMEvent`, that answers when a container of the
//! sandbox is OOM-killed. [`OomEvents`] keeps one such call in flight at a time and yields the
//! container id of each answer. It ends when the connection to the agent closes (the VM
//! stopped) or when the agent does not offer the call (`NOT_FOUND`); any other failure is
//! logged and the call is repeated after a pause (100 ms, doubling up to 5 s, back to
//! 100 ms after an event), so one bad answer does not end the watch.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;

use crate::client::AgentClient;
use crate::error::Result;
use crate::protocol::agent::{GetOOMEventRequest, OOMEvent};

/// The first pause after a failed `GetOOMEvent`.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// The longest pause between retries.
const MAX_RETRY: Duration = Duration::from_secs(5);

type Pending = Pin<Box<dyn Future<Output = Result<OOMEvent>> + Send>>;

/// The ids of the containers the guest kernel OOM-kills, as a [`Stream`]; made by
/// [`Agent::oom_events`](crate::Agent::oom_events).
///
/// Lazy: nothing is asked of the agent until it is polled, and dropping it cancels the
/// call in flight. [`OomEvents::next`] reads it without a `StreamExt` in scope.
///
/// ```no_run
/// # async fn watch(agent: kata_agent_client::Agent) {
/// let mut events = agent.oom_events();
/// while let Some(container_id) = events.next().await {
///     println!("{container_id} was OOM-killed");
/// }
/// // The connection to the agent closed.
/// # }
/// ```
pub struct OomEvents {
    agent: AgentClient,
    pending: Option<Pending>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    next_retry: Duration,
    ended: bool,
}

impl std::fmt::Debug for OomEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OomEvents")
            .field("address", self.agent.address())
            .field("in_flight", &self.pending.is_some())
            .field("pausing", &self.pause.is_some())
            .field("ended", &self.ended)
            .finish()
    }
}

impl OomEvents {
    pub(crate) fn new(agent: AgentClient) -> Self {
        OomEvents {
            agent,
            pending: None,
            pause: None,
            next_retry: FIRST_RETRY,
            ended: false,
        }
    }

    /// The next OOM-killed container id; `None` once the stream ended.
    pub async fn next(&mut self) -> Option<String> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for OomEvents {
    type Item = String;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<String>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if let Some(pause) = this.pause.as_mut() {
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.pause = None;
            }
            let pending = this.pending.get_or_insert_with(|| {
                let agent = this.agent.clone();
                Box::pin(async move { agent.get_oom_event(&GetOOMEventRequest::new(), None).await })
            });
            let result = match pending.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => result,
            };
            this.pending = None;
            match result {
                Ok(event) => {
                    this.next_retry = FIRST_RETRY;
                    return Poll::Ready(Some(event.container_id));
                }
                Err(err) if err.is_connection_closed() => {
                    tracing::debug!(address = %this.agent.address(), error = %err, "OOM events end: the agent connection closed");
                    this.ended = true;
                }
                Err(err) if err.is_not_found() => {
                    tracing::warn!(address = %this.agent.address(), error = %err, "OOM events end: the agent does not report OOM kills");
                    this.ended = true;
                }
                Err(err) => {
                    tracing::warn!(address = %this.agent.address(), error = %err, retry_in = ?this.next_retry, "GetOOMEvent failed; asking again");
                    this.pause = Some(Box::pin(tokio::time::sleep(this.next_retry)));
                    this.next_retry = (this.next_retry * 2).min(MAX_RETRY);
                }
            }
        }
    }
}
