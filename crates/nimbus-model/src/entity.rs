//! The four entity kinds and their OpenWhisk JSON views.
//!
//! Each struct derives serde for the store's own document format; `api_json` builds the exact
//! shape the REST API returns (e.g. a packaged action shows `namespace` as `ns/pkg`).

use crate::error::ModelError;
use crate::exec::Exec;
use crate::limits::ActionLimits;
use crate::names::{EntityPath, FullyQualifiedName, PathName};
use crate::params::KeyValues;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::fmt;

/// The collections of the REST API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntityKind {
    Action,
    Package,
    Trigger,
    Rule,
}

impl EntityKind {
    pub fn collection(&self) -> &'static str {
        match self {
            EntityKind::Action => "actions",
            EntityKind::Package => "packages",
            EntityKind::Trigger => "triggers",
            EntityKind::Rule => "rules",
        }
    }
}

/// A `major.minor.patch` version; each overwrite bumps the patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Default for Version {
    fn default() -> Self {
        Version(0, 0, 1)
    }
}

impl Version {
    pub fn parse(s: &str) -> Result<Version, ModelError> {
        let parts: Vec<&str> = s.split('.').collect();
        let err = || {
            ModelError::invalid(format!(
                "The version '{s}' is not a valid semantic version (major.minor.patch)."
            ))
        };
        if parts.len() != 3 {
            return Err(err());
        }
        let n = |p: &str| p.parse::<u32>().map_err(|_| err());
        Ok(Version(n(parts[0])?, n(parts[1])?, n(parts[2])?))
    }

    pub fn bump(&self) -> Version {
        Version(self.0, self.1, self.2 + 1)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Version::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Mutable views of the fields every entity shares, which every update changes the same way.
pub struct CommonMut<'a> {
    pub version: &'a mut Version,
    pub publish: &'a mut bool,
    pub annotations: &'a mut KeyValues,
    pub updated: &'a mut i64,
}

macro_rules! common_mut {
    ($($t:ty),*) => {$(
        impl $t {
            pub fn common_mut(&mut self) -> CommonMut<'_> {
                CommonMut {
                    version: &mut self.version,
                    publish: &mut self.publish,
                    annotations: &mut self.annotations,
                    updated: &mut self.updated,
                }
            }
        }
    )*};
}

common_mut!(Action, Package, Trigger, Rule);

fn ns_view(namespace: &str, path: &EntityPath) -> String {
    match &path.package {
        Some(p) => format!("{namespace}/{p}"),
        None => namespace.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub namespace: String,
    pub path: EntityPathDoc,
    pub version: Version,
    pub publish: bool,
    pub annotations: KeyValues,
    pub exec: Exec,
    pub parameters: KeyValues,
    pub limits: ActionLimits,
    pub updated: i64,
}

/// `EntityPath` as stored: `{package, name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityPathDoc {
    pub package: Option<String>,
    pub name: String,
}

impl From<&EntityPath> for EntityPathDoc {
    fn from(p: &EntityPath) -> Self {
        EntityPathDoc {
            package: p.package.clone(),
            name: p.name.clone(),
        }
    }
}

impl EntityPathDoc {
    pub fn to_path(&self) -> EntityPath {
        EntityPath::new(self.package.clone(), self.name.clone())
    }
}

impl Action {
    pub fn fqn(&self) -> FullyQualifiedName {
        FullyQualifiedName::new(self.namespace.clone(), self.path.to_path())
    }

    /// `GET /actions/{name}` (and the PUT answer).
    pub fn api_json(&self, with_code: bool) -> Value {
        json!({
            "namespace": ns_view(&self.namespace, &self.path.to_path()),
            "name": self.path.name,
            "version": self.version,
            "publish": self.publish,
            "annotations": self.annotations,
            "exec": self.exec.to_json(with_code),
            "parameters": self.parameters,
            "limits": self.limits,
            "updated": self.updated,
        })
    }

    /// One item of `GET /actions`: no code, no parameters.
    pub fn list_json(&self) -> Value {
        json!({
            "namespace": ns_view(&self.namespace, &self.path.to_path()),
            "name": self.path.name,
            "version": self.version,
            "publish": self.publish,
            "annotations": self.annotations,
            "limits": self.limits,
            "exec": {"binary": self.exec.is_binary()},
            "updated": self.updated,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Package {
    pub namespace: String,
    pub name: String,
    pub version: Version,
    pub publish: bool,
    pub annotations: KeyValues,
    pub parameters: KeyValues,
    /// Set for a binding: the package it points at.
    pub binding: Option<BindingRef>,
    pub updated: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingRef {
    pub namespace: String,
    pub name: String,
}

impl Package {
    pub fn binding_json(&self) -> Value {
        match &self.binding {
            Some(b) => json!({"namespace": b.namespace, "name": b.name}),
            None => json!({}),
        }
    }

    /// `GET /packages/{name}`; `actions` and `feeds` are filled in by the caller.
    pub fn api_json(&self, actions: Vec<Value>, feeds: Vec<Value>) -> Value {
        json!({
            "namespace": self.namespace,
            "name": self.name,
            "version": self.version,
            "publish": self.publish,
            "annotations": self.annotations,
            "parameters": self.parameters,
            "binding": self.binding_json(),
            "actions": actions,
            "feeds": feeds,
            "updated": self.updated,
        })
    }

    pub fn list_json(&self) -> Value {
        let binding = match &self.binding {
            Some(b) => json!({"namespace": b.namespace, "name": b.name}),
            None => json!(false),
        };
        json!({
            "namespace": self.namespace,
            "name": self.name,
            "version": self.version,
            "publish": self.publish,
            "annotations": self.annotations,
            "binding": binding,
            "updated": self.updated,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    pub namespace: String,
    pub name: String,
    pub version: Version,
    pub publish: bool,
    pub annotations: KeyValues,
    pub parameters: KeyValues,
    pub updated: i64,
}

impl Trigger {
    pub fn fqn(&self) -> FullyQualifiedName {
        FullyQualifiedName::new(
            self.namespace.clone(),
            EntityPath::new(None, self.name.clone()),
        )
    }

    /// `rules` is the map built from the rules that name this trigger (omitted when empty).
    pub fn api_json(&self, rules: Option<Value>) -> Value {
        let mut v = json!({
            "namespace": self.namespace,
            "name": self.name,
            "version": self.version,
            "publish": self.publish,
            "annotations": self.annotations,
            "parameters": self.parameters,
            "limits": {},
            "updated": self.updated,
        });
        if let (Some(r), Some(obj)) = (rules, v.as_object_mut()) {
            obj.insert("rules".into(), r);
        }
        v
    }

    pub fn list_json(&self) -> Value {
        json!({
            "namespace": self.namespace,
            "name": self.name,
            "version": self.version,
            "publish": self.publish,
            "annotations": self.annotations,
            "updated": self.updated,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleStatus {
    Active,
    Inactive,
}

impl RuleStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RuleStatus::Active => "active",
            RuleStatus::Inactive => "inactive",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub namespace: String,
    pub name: String,
    pub version: Version,
    pub publish: bool,
    pub annotations: KeyValues,
    pub status: RuleStatus,
    /// `/ns/trigger`
    pub trigger: String,
    /// `/ns/[pkg/]action`
    pub action: String,
    pub updated: i64,
}

impl Rule {
    pub fn trigger_fqn(&self) -> Result<FullyQualifiedName, ModelError> {
        FullyQualifiedName::parse(&self.trigger, &self.namespace)
    }

    pub fn action_fqn(&self) -> Result<FullyQualifiedName, ModelError> {
        FullyQualifiedName::parse(&self.action, &self.namespace)
    }

    pub fn api_json(&self) -> Value {
        let pn = |s: &str| {
            FullyQualifiedName::parse(s, &self.namespace)
                .map(|f| serde_json::to_value(PathName::from(&f)).unwrap_or(Value::Null))
                .unwrap_or(Value::Null)
        };
        json!({
            "namespace": self.namespace,
            "name": self.name,
            "version": self.version,
            "publish": self.publish,
            "annotations": self.annotations,
            "status": self.status.as_str(),
            "trigger": pn(&self.trigger),
            "action": pn(&self.action),
            "updated": self.updated,
        })
    }

    pub fn list_json(&self) -> Value {
        self.api_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_bump_the_patch() {
        let v = Version::parse("0.0.9").unwrap();
        assert_eq!(v.bump().to_string(), "0.0.10");
        assert!(Version::parse("1.2").is_err());
        assert_eq!(
            serde_json::to_value(Version::default()).unwrap(),
            json!("0.0.1")
        );
    }

    #[test]
    fn packaged_actions_show_their_package_in_the_namespace() {
        let a = Action {
            namespace: "guest".into(),
            path: EntityPathDoc {
                package: Some("p".into()),
                name: "a".into(),
            },
            version: Version::default(),
            publish: false,
            annotations: KeyValues::new(),
            exec: Exec::Code {
                kind: "nodejs:20".into(),
                code: "x".into(),
                binary: false,
                main: None,
            },
            parameters: KeyValues::new(),
            limits: ActionLimits::default(),
            updated: 1,
        };
        let j = a.api_json(false);
        assert_eq!(j["namespace"], "guest/p");
        assert!(j["exec"].get("code").is_none());
        assert_eq!(a.list_json()["exec"], json!({"binary": false}));
    }
}
