//! Request bodies of the entity PUTs (any subset of fields, as the OpenWhisk clients send them).

use nimbus_model::KeyValues;
use nimbus_model::exec::ExecJson;
use nimbus_model::limits::LimitsPut;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Default, Deserialize)]
pub struct ActionPut {
    pub exec: Option<ExecJson>,
    pub parameters: Option<KeyValues>,
    pub annotations: Option<KeyValues>,
    #[serde(rename = "delAnnotations")]
    pub del_annotations: Option<Vec<String>>,
    pub limits: Option<LimitsPut>,
    pub version: Option<String>,
    pub publish: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PackagePut {
    pub parameters: Option<KeyValues>,
    pub annotations: Option<KeyValues>,
    pub publish: Option<bool>,
    pub version: Option<String>,
    /// `{}` or absent for a package, `{namespace, name}` for a binding.
    pub binding: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct TriggerPut {
    pub parameters: Option<KeyValues>,
    pub annotations: Option<KeyValues>,
    pub publish: Option<bool>,
    pub version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RulePut {
    pub trigger: Option<Value>,
    pub action: Option<Value>,
    pub status: Option<String>,
    pub annotations: Option<KeyValues>,
    pub publish: Option<bool>,
    pub version: Option<String>,
}
