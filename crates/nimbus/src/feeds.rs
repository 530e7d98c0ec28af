//! Wiring of the built-in feed providers (`nimbus-feeds`) into `nimbus serve`.

use nimbus_controller::Controller;
use nimbus_feeds::{DeadLetterSink, Feeds};
use nimbus_store::SqliteStore;
use serde_json::{Value, json};
use std::sync::Arc;

/// Feed messages that cannot become events (malformed payloads, and so on) go to the
/// namespace's dead-letter list (`GET /namespaces/{ns}/deadletters`), with the trigger in
/// `details` so a redrive fires it again with the original message.
struct ControllerDeadLetters {
    controller: Arc<Controller>,
}

#[async_trait::async_trait]
impl DeadLetterSink for ControllerDeadLetters {
    async fn dead_letter(
        &self,
        namespace: &str,
        source: &str,
        reason: &str,
        event: Value,
    ) -> Result<(), String> {
        // The source label is `feed:<provider>:<ns>/<trigger>`.
        let trigger = source.rsplit('/').next().unwrap_or_default().to_string();
        self.controller
            .record_dead_letter_with(
                namespace,
                nimbus_controller::NewDeadLetter {
                    source: source.to_string(),
                    reason: reason.to_string(),
                    event,
                    attempts: 0,
                    details: json!({ "trigger": trigger }),
                },
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Registers the built-in providers as native actions and resumes their stored registrations.
pub async fn start(
    controller: &Arc<Controller>,
    store: SqliteStore,
    egress: nimbus_egress::EgressPolicy,
) -> anyhow::Result<Feeds> {
    let dead = Arc::new(ControllerDeadLetters {
        controller: controller.clone(),
    });
    let feeds = Feeds::new(controller.clone(), Arc::new(store), dead, egress);
    controller.set_native_actions(Arc::new(feeds.clone()));
    let n = feeds.resume().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    if n > 0 {
        tracing::info!(feeds = n, "resumed feed registrations");
    }
    Ok(feeds)
}
