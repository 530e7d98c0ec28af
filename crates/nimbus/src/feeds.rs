//! Wiring of the built-in feed providers (`nimbus-feeds`) into `nimbus serve`.

use nimbus_controller::Controller;
use nimbus_feeds::{DeadLetterSink, Feeds};
use nimbus_model::{
    Activation, ActivationId, ActivationResponse, KeyValues, ResponseStatus, now_millis,
};
use nimbus_store::{SqliteStore, Store};
use serde_json::{Value, json};
use std::sync::Arc;

/// Dead letters of feed messages.
///
/// INTERIM (until the per-namespace dead-letter list of issue 5 §3 is merged from
/// `wip/delivery`): each entry is stored as an activation record of the namespace named
/// `dead-letter`, with status application error, the reason and the original message, and the
/// annotation `deadLetter: true`. It is durable and listable (`nimbus activation list
/// dead-letter`); the switch to the dead-letter store is this one function.
struct ActivationDeadLetters {
    store: Arc<dyn Store>,
}

#[async_trait::async_trait]
impl DeadLetterSink for ActivationDeadLetters {
    async fn dead_letter(
        &self,
        namespace: &str,
        source: &str,
        reason: &str,
        event: Value,
    ) -> Result<(), String> {
        let now = now_millis();
        let mut annotations = KeyValues::new();
        annotations.set("path", json!(format!("{namespace}/dead-letter")));
        annotations.set("kind", json!("dead-letter"));
        annotations.set("deadLetter", json!(true));
        annotations.set("source", json!(source));
        let mut response = ActivationResponse::error(ResponseStatus::ApplicationError, reason);
        response.result = json!({"error": reason, "source": source, "event": event});
        let record = Activation {
            namespace: namespace.to_string(),
            name: "dead-letter".into(),
            subject: namespace.to_string(),
            activation_id: ActivationId::generate(),
            version: Default::default(),
            publish: false,
            start: now,
            end: now,
            duration: Some(0),
            cause: None,
            logs: vec![],
            annotations,
            response,
        };
        self.store
            .put_activation(&record)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Registers the built-in providers as native actions and resumes their stored registrations.
pub async fn start(controller: &Arc<Controller>, store: SqliteStore) -> anyhow::Result<Feeds> {
    let dead = Arc::new(ActivationDeadLetters {
        store: controller.store().clone(),
    });
    let feeds = Feeds::new(controller.clone(), Arc::new(store), dead);
    controller.set_native_actions(Arc::new(feeds.clone()));
    let n = feeds.resume().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    if n > 0 {
        tracing::info!(feeds = n, "resumed feed registrations");
    }
    Ok(feeds)
}
