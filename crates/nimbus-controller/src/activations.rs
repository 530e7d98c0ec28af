//! Reading activation records.

use crate::{Controller, ControllerError, Identity, Result};
use nimbus_model::{Activation, ActivationId};
use nimbus_store::{ActivationQuery, NamespaceStorage};
use serde_json::{Value, json};

/// `GET /activations` query, already parsed.
#[derive(Debug, Clone, Default)]
pub struct ActivationListQuery {
    pub name: Option<String>,
    pub since: Option<i64>,
    pub upto: Option<i64>,
    pub skip: u64,
    pub limit: u64,
    pub docs: bool,
}

impl Controller {
    pub async fn list_activations(
        &self,
        who: &Identity,
        ns: &str,
        q: &ActivationListQuery,
    ) -> Result<Vec<Value>> {
        self.ensure_own(who, ns)?;
        let list = self
            .store
            .list_activations(
                &who.namespace,
                &ActivationQuery {
                    name: q.name.clone(),
                    since: q.since,
                    upto: q.upto,
                    skip: q.skip,
                    limit: Some(q.limit),
                },
            )
            .await?;
        Ok(list
            .iter()
            .map(|a| {
                if q.docs {
                    serde_json::to_value(a).unwrap_or(Value::Null)
                } else {
                    a.brief()
                }
            })
            .collect())
    }

    pub async fn count_activations(
        &self,
        who: &Identity,
        ns: &str,
        q: &ActivationListQuery,
    ) -> Result<u64> {
        self.ensure_own(who, ns)?;
        Ok(self
            .store
            .count_activations(
                &who.namespace,
                &ActivationQuery {
                    name: q.name.clone(),
                    since: q.since,
                    upto: q.upto,
                    skip: 0,
                    limit: None,
                },
            )
            .await?)
    }

    pub async fn get_activation(&self, who: &Identity, ns: &str, id: &str) -> Result<Activation> {
        self.ensure_own(who, ns)?;
        let Some(id) = ActivationId::parse(id) else {
            return Err(ControllerError::not_found());
        };
        self.store
            .get_activation(&who.namespace, &id)
            .await?
            .ok_or_else(ControllerError::not_found)
    }

    pub async fn activation_result(&self, who: &Identity, ns: &str, id: &str) -> Result<Value> {
        let a = self.get_activation(who, ns, id).await?;
        Ok(serde_json::to_value(&a.response).unwrap_or(Value::Null))
    }

    /// Deletes one of the namespace's activation records (frees its bytes of the quota).
    pub async fn delete_activation(&self, who: &Identity, ns: &str, id: &str) -> Result<()> {
        self.ensure_own(who, ns)?;
        let Some(id) = ActivationId::parse(id) else {
            return Err(ControllerError::not_found());
        };
        if self.store.delete_activation(&who.namespace, &id).await? {
            Ok(())
        } else {
            Err(ControllerError::not_found())
        }
    }

    /// The namespace's storage use, quota and retention.
    pub async fn storage(&self, who: &Identity, ns: &str) -> Result<NamespaceStorage> {
        self.ensure_own(who, ns)?;
        Ok(self.store.namespace_storage(&who.namespace).await?)
    }

    pub async fn activation_logs(&self, who: &Identity, ns: &str, id: &str) -> Result<Value> {
        let a = self.get_activation(who, ns, id).await?;
        Ok(json!({ "logs": a.logs }))
    }
}
