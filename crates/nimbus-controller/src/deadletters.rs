//! The per-namespace dead-letter list: events that could not be delivered (a rule's action kept
//! failing until its retry policy gave up, or a feed message that could not become an event).
//! Listing, inspecting and purging are here; redrive is in `delivery.rs`.

use crate::{Controller, ControllerError, Identity, Paging, Result};
use nimbus_model::{ActivationId, now_millis};
use nimbus_store::DeadLetter;
use serde_json::{Value, json};

/// What a feed (or any other producer) records when it cannot deliver an event.
#[derive(Debug, Clone, Default)]
pub struct NewDeadLetter {
    /// Where it came from, e.g. `feed:mqtt:guest/t1` or `rule:guest/r1`.
    pub source: String,
    /// Why it was not delivered, for a human.
    pub reason: String,
    /// The event (or the raw message, e.g. `{"topic": …, "raw": "…"}`).
    pub event: Value,
    /// Attempts made before giving up.
    pub attempts: u32,
    /// Extra, machine-readable details. A `trigger` key (the trigger's name in the namespace)
    /// makes the entry redrivable by firing that trigger with `event`.
    pub details: Value,
}

/// Dead-letter ids are 32 hex characters, like activation ids.
fn check_id(id: &str) -> Result<()> {
    if ActivationId::parse(id).is_some() {
        Ok(())
    } else {
        Err(ControllerError::NotFound(format!(
            "The dead letter '{id}' does not exist."
        )))
    }
}

impl Controller {
    /// Records an undeliverable event in `ns`'s dead-letter list and returns its id. For
    /// platform components (feeds, the dispatcher); no caller identity is checked.
    pub async fn record_dead_letter(
        &self,
        ns: &str,
        source: &str,
        reason: &str,
        event: Value,
    ) -> Result<String> {
        self.record_dead_letter_with(
            ns,
            NewDeadLetter {
                source: source.to_string(),
                reason: reason.to_string(),
                event,
                attempts: 0,
                details: json!({}),
            },
        )
        .await
    }

    /// Like [`Controller::record_dead_letter`], with attempts and details.
    pub async fn record_dead_letter_with(&self, ns: &str, new: NewDeadLetter) -> Result<String> {
        let dl = DeadLetter {
            id: ActivationId::generate().to_string(),
            namespace: ns.to_string(),
            source: new.source,
            reason: new.reason,
            event: new.event,
            attempts: new.attempts,
            created_at: now_millis(),
            details: if new.details.is_object() {
                new.details
            } else {
                json!({})
            },
        };
        self.store.put_dead_letter(&dl).await?;
        tracing::warn!(namespace = ns, id = %dl.id, source = %dl.source, reason = %dl.reason, "event dead-lettered");
        Ok(dl.id)
    }

    /// The caller's dead letters, newest first.
    pub async fn list_dead_letters(
        &self,
        who: &Identity,
        ns: &str,
        paging: &Paging,
    ) -> Result<Vec<DeadLetter>> {
        self.ensure_own(who, ns)?;
        Ok(self
            .store
            .list_dead_letters(&who.namespace, paging.skip, Some(paging.limit))
            .await?)
    }

    pub async fn count_dead_letters(&self, who: &Identity, ns: &str) -> Result<u64> {
        self.ensure_own(who, ns)?;
        Ok(self.store.count_dead_letters(&who.namespace).await?)
    }

    pub async fn get_dead_letter(&self, who: &Identity, ns: &str, id: &str) -> Result<DeadLetter> {
        self.ensure_own(who, ns)?;
        check_id(id)?;
        self.store
            .get_dead_letter(&who.namespace, id)
            .await?
            .ok_or_else(|| {
                ControllerError::NotFound(format!("The dead letter '{id}' does not exist."))
            })
    }

    /// Deletes one entry.
    pub async fn delete_dead_letter(&self, who: &Identity, ns: &str, id: &str) -> Result<()> {
        self.ensure_own(who, ns)?;
        check_id(id)?;
        if self.store.delete_dead_letter(&who.namespace, id).await? {
            Ok(())
        } else {
            Err(ControllerError::NotFound(format!(
                "The dead letter '{id}' does not exist."
            )))
        }
    }

    /// Deletes every entry of the namespace; returns how many.
    pub async fn purge_dead_letters(&self, who: &Identity, ns: &str) -> Result<u64> {
        self.ensure_own(who, ns)?;
        Ok(self.store.purge_dead_letters(&who.namespace).await?)
    }
}
