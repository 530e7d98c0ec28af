//! Request bodies of the entity PUTs (any subset of fields, as the OpenWhisk clients send them).

use crate::Result;
use nimbus_model::entity::{CommonMut, Version};
use nimbus_model::exec::ExecJson;
use nimbus_model::limits::LimitsPut;
use nimbus_model::{KeyValues, ModelError};
use serde::Deserialize;
use serde_json::Value;

/// The fields every entity shares, updated the same way by every PUT: annotations merge key by
/// key (`delAnnotations` removes keys), `publish` replaces, and the version goes up one patch
/// level unless a higher one is given.
#[derive(Debug, Default, Deserialize)]
pub struct CommonPut {
    pub annotations: Option<KeyValues>,
    #[serde(rename = "delAnnotations")]
    pub del_annotations: Option<Vec<String>>,
    pub publish: Option<bool>,
    pub version: Option<String>,
}

impl CommonPut {
    /// The version of a new entity (`None`) or of the next revision of one at `old`.
    pub(crate) fn version(&self, old: Option<Version>) -> Result<Version> {
        match self.version.as_deref() {
            Some(v) if !v.is_empty() => {
                let v = Version::parse(v)?;
                Ok(match old {
                    Some(o) if v <= o => o.bump(),
                    _ => v,
                })
            }
            _ => Ok(old.map(|o| o.bump()).unwrap_or_default()),
        }
    }

    /// The annotations of a new entity.
    pub(crate) fn initial_annotations(&self) -> KeyValues {
        let mut a = self.annotations.clone().unwrap_or_default();
        for k in self.del_annotations.iter().flatten() {
            a.remove(k);
        }
        a
    }

    /// Applies this PUT to an existing entity's shared fields.
    pub(crate) fn update(&self, h: CommonMut<'_>, now: i64) -> Result<()> {
        if let Some(a) = &self.annotations {
            h.annotations.merge(a);
        }
        for k in self.del_annotations.iter().flatten() {
            h.annotations.remove(k);
        }
        if let Some(p) = self.publish {
            *h.publish = p;
        }
        *h.version = self.version(Some(*h.version))?;
        *h.updated = now;
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ActionPut {
    pub exec: Option<ExecJson>,
    pub parameters: Option<KeyValues>,
    pub limits: Option<LimitsPut>,
    #[serde(flatten)]
    pub common: CommonPut,
}

#[derive(Debug, Default, Deserialize)]
pub struct PackagePut {
    pub parameters: Option<KeyValues>,
    /// `{}` or absent for a package, `{namespace, name}` for a binding.
    pub binding: Option<Value>,
    #[serde(flatten)]
    pub common: CommonPut,
}

#[derive(Debug, Default, Deserialize)]
pub struct TriggerPut {
    pub parameters: Option<KeyValues>,
    #[serde(flatten)]
    pub common: CommonPut,
}

#[derive(Debug, Default, Deserialize)]
pub struct RulePut {
    pub trigger: Option<Value>,
    pub action: Option<Value>,
    pub status: Option<String>,
    /// Delivery settings, stored as the rule's annotations of the same names (see
    /// `delivery.rs`); an empty string or `null`-like empty value removes one.
    pub filter: Option<Value>,
    pub retry: Option<Value>,
    #[serde(rename = "orderingKey")]
    pub ordering_key: Option<Value>,
    #[serde(flatten)]
    pub common: CommonPut,
}

/// Parses a PUT body (a JSON document) into its typed request.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: Value) -> Result<T> {
    serde_json::from_value(body)
        .map_err(|e| ModelError::invalid(format!("The request content was malformed:\n{e}")).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_bump_or_follow_a_higher_request() {
        let c = CommonPut::default();
        assert_eq!(c.version(None).unwrap().to_string(), "0.0.1");
        assert_eq!(
            c.version(Some(Version(0, 0, 4))).unwrap().to_string(),
            "0.0.5"
        );
        let c = CommonPut {
            version: Some("1.0.0".into()),
            ..Default::default()
        };
        assert_eq!(
            c.version(Some(Version(0, 0, 4))).unwrap().to_string(),
            "1.0.0"
        );
        let c = CommonPut {
            version: Some("0.0.1".into()),
            ..Default::default()
        };
        assert_eq!(
            c.version(Some(Version(0, 0, 4))).unwrap().to_string(),
            "0.0.5"
        );
    }

    #[test]
    fn updates_merge_annotations_and_keep_what_is_left_out() {
        let put: TriggerPut = parse_body(json!({
            "annotations": [{"key": "b", "value": 2}],
            "delAnnotations": ["c"]
        }))
        .unwrap();
        let mut version = Version(0, 0, 1);
        let mut publish = true;
        let mut annotations: KeyValues =
            serde_json::from_value(json!([{"key": "a", "value": 1}, {"key": "c", "value": 3}]))
                .unwrap();
        let mut updated = 0;
        put.common
            .update(
                CommonMut {
                    version: &mut version,
                    publish: &mut publish,
                    annotations: &mut annotations,
                    updated: &mut updated,
                },
                42,
            )
            .unwrap();
        assert_eq!(
            serde_json::to_value(&annotations).unwrap(),
            json!([{"key": "a", "value": 1}, {"key": "b", "value": 2}])
        );
        assert!(publish, "publish left out is kept");
        assert_eq!((version, updated), (Version(0, 0, 2), 42));
        assert!(parse_body::<TriggerPut>(json!({"parameters": 5})).is_err());
    }
}
