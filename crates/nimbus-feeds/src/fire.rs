//! Firing a trigger on behalf of a feed, and recording what could not be fired.

use crate::Inner;
use async_trait::async_trait;
use nimbus_controller::{ControllerError, Identity};
use nimbus_model::ActivationId;
use nimbus_store::FeedRegistration;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// Where feed messages that cannot become events go (the namespace's dead-letter list).
#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    /// Durably records `event` (the raw message as far as it could be read) with `reason`.
    /// `source` is e.g. `feed:mqtt/subscribe:guest/t1`.
    async fn dead_letter(
        &self,
        namespace: &str,
        source: &str,
        reason: &str,
        event: Value,
    ) -> Result<(), String>;
}

/// The result of one fire.
#[derive(Debug)]
pub enum Fired {
    /// Durably accepted: the trigger record is stored and every rule activation is in the
    /// fsynced queue (`None`: no active rule, nothing to run).
    Accepted(Option<ActivationId>),
    /// The event itself is unacceptable (e.g. too large); recorded as a dead letter.
    DeadLettered,
    /// The trigger or the namespace credential no longer exists: the feed must stop.
    Gone,
}

/// Fires one registration's trigger, retrying transient failures.
pub struct Firer {
    inner: Arc<Inner>,
    reg: FeedRegistration,
    who: tokio::sync::Mutex<Option<Identity>>,
}

impl Firer {
    pub(crate) fn new(inner: Arc<Inner>, reg: FeedRegistration) -> Firer {
        Firer {
            inner,
            reg,
            who: tokio::sync::Mutex::new(None),
        }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    pub fn registration(&self) -> &FeedRegistration {
        &self.reg
    }

    /// `feed:<provider>:<ns>/<trigger>`, the dead-letter source.
    pub fn source_label(&self) -> String {
        format!(
            "feed:{}:{}/{}",
            self.reg.provider, self.reg.namespace, self.reg.trigger
        )
    }

    pub(crate) async fn identity(&self) -> Result<Option<Identity>, ControllerError> {
        let mut g = self.who.lock().await;
        if let Some(w) = g.as_ref() {
            return Ok(Some(w.clone()));
        }
        let found = self
            .inner
            .controller
            .store()
            .credential_by_uuid(&self.reg.uuid)
            .await?;
        let who = found.as_ref().map(Identity::from);
        *g = who.clone();
        Ok(who)
    }

    /// Fires `event`. Returns only once the outcome is durable; transient failures (throttling,
    /// shutdown, store errors) are retried with backoff for as long as it takes, so a message
    /// feed naturally applies backpressure to its broker.
    pub async fn fire(&self, event: Map<String, Value>) -> Fired {
        let mut delay = Duration::from_millis(50);
        loop {
            let who = match self.identity().await {
                Ok(Some(w)) => w,
                Ok(None) => {
                    tracing::warn!(feed = %self.source_label(), "the namespace credential of this feed is gone; stopping it");
                    return Fired::Gone;
                }
                Err(e) => {
                    tracing::warn!(feed = %self.source_label(), error = %e, "cannot read the feed's credential; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            match self
                .inner
                .controller
                .fire_trigger(&who, &self.reg.namespace, &self.reg.trigger, event.clone())
                .await
            {
                Ok(id) => return Fired::Accepted(id),
                Err(ControllerError::NotFound(_)) | Err(ControllerError::Forbidden(_)) => {
                    tracing::warn!(feed = %self.source_label(), "the feed's trigger no longer exists; stopping the feed");
                    return Fired::Gone;
                }
                Err(e @ (ControllerError::TooLarge(_) | ControllerError::BadRequest(_))) => {
                    // Retrying cannot help: keep the event in the dead-letter list instead.
                    let reason = e.to_string();
                    let mut d = Duration::from_millis(200);
                    while !self
                        .dead_letter(&reason, Value::Object(event.clone()))
                        .await
                    {
                        tokio::time::sleep(d).await;
                        d = (d * 2).min(Duration::from_secs(10));
                    }
                    return Fired::DeadLettered;
                }
                Err(e) => {
                    tracing::debug!(feed = %self.source_label(), error = %e, "fire not accepted yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Records a malformed or unacceptable message; `true` once it is durably stored.
    pub async fn dead_letter(&self, reason: &str, event: Value) -> bool {
        match self
            .inner
            .dead
            .dead_letter(&self.reg.namespace, &self.source_label(), reason, event)
            .await
        {
            Ok(()) => {
                tracing::warn!(feed = %self.source_label(), %reason, "message dead-lettered");
                true
            }
            Err(e) => {
                tracing::error!(feed = %self.source_label(), error = %e, "cannot record a dead letter");
                false
            }
        }
    }
}

/// Exponential backoff with jitter for reconnect loops: 0.5 s doubling up to 30 s.
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(500),
        }
    }
}

impl Backoff {
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(500);
    }

    /// The delay to wait now (with up to 25 % jitter), doubling the next one.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(30));
        let jitter = rand::random_range(0..=base.as_millis() as u64 / 4);
        base + Duration::from_millis(jitter)
    }
}
