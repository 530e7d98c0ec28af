//! Entity names and paths (`EntityPath.scala`): `/ns[/pkg]/name`.

use crate::error::ModelError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest entity name OpenWhisk accepts.
pub const MAX_NAME_LEN: usize = 256;

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Checks one path segment against `\A([\w]|[\w][\w@ .&-]{0,254}[\w@.&-])\z`.
pub fn validate_name(name: &str) -> Result<(), ModelError> {
    let bad = || {
        ModelError::invalid(format!(
            "The name '{name}' is not valid: names must start with a letter, digit or underscore, may contain letters, digits, '_', '@', '.', '&', '-' and inner spaces, and are at most {MAX_NAME_LEN} characters."
        ))
    };
    let chars: Vec<char> = name.chars().collect();
    if chars.is_empty() || chars.len() > MAX_NAME_LEN {
        return Err(bad());
    }
    if !is_word(chars[0]) {
        return Err(bad());
    }
    if chars.len() == 1 {
        return Ok(());
    }
    let last = chars[chars.len() - 1];
    if !(is_word(last) || matches!(last, '@' | '.' | '&' | '-')) {
        return Err(bad());
    }
    if chars[1..chars.len() - 1]
        .iter()
        .all(|&c| is_word(c) || matches!(c, '@' | ' ' | '.' | '&' | '-'))
    {
        Ok(())
    } else {
        Err(bad())
    }
}

/// A path inside a namespace: an optional package and a name (`pkg/name` or `name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityPath {
    pub package: Option<String>,
    pub name: String,
}

impl EntityPath {
    pub fn new(package: Option<String>, name: impl Into<String>) -> Self {
        EntityPath {
            package,
            name: name.into(),
        }
    }

    /// Parses `name` or `pkg/name`, validating each segment.
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [name] => {
                validate_name(name)?;
                Ok(EntityPath::new(None, *name))
            }
            [pkg, name] => {
                validate_name(pkg)?;
                validate_name(name)?;
                Ok(EntityPath::new(Some((*pkg).to_string()), *name))
            }
            _ => Err(ModelError::invalid(format!(
                "The path '{s}' is not valid: expected 'name' or 'package/name'."
            ))),
        }
    }

    /// The key under which the store keeps the entity: `pkg/name` or `name`.
    pub fn key(&self) -> String {
        match &self.package {
            Some(p) => format!("{p}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

impl fmt::Display for EntityPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// `/ns[/pkg]/name`, the form used by sequences, rules and bindings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FullyQualifiedName {
    pub namespace: String,
    pub path: EntityPath,
}

impl FullyQualifiedName {
    pub fn new(namespace: impl Into<String>, path: EntityPath) -> Self {
        FullyQualifiedName {
            namespace: namespace.into(),
            path,
        }
    }

    /// Parses `/ns/name`, `/ns/pkg/name`, `ns/pkg/name` (3 segments) or a relative `name` / `pkg/name`
    /// (2 segments without a leading slash are `pkg/name`, as the OpenWhisk clients read them),
    /// resolving `_` and relative names against `default_ns`.
    pub fn parse(s: &str, default_ns: &str) -> Result<Self, ModelError> {
        let absolute = s.starts_with('/');
        let trimmed = s.trim_start_matches('/');
        let parts: Vec<&str> = trimmed.split('/').collect();
        let (ns, path) = match (absolute, parts.as_slice()) {
            (true, [ns, name]) => (*ns, EntityPath::parse(name)?),
            (true, [ns, pkg, name]) => (*ns, EntityPath::parse(&format!("{pkg}/{name}"))?),
            (false, [name]) => (default_ns, EntityPath::parse(name)?),
            (false, [pkg, name]) => (default_ns, EntityPath::parse(&format!("{pkg}/{name}"))?),
            (false, [ns, pkg, name]) => (*ns, EntityPath::parse(&format!("{pkg}/{name}"))?),
            _ => {
                return Err(ModelError::invalid(format!(
                    "The name '{s}' is not a valid fully qualified name (expected /namespace/[package/]name)."
                )));
            }
        };
        let ns = if ns == "_" { default_ns } else { ns };
        validate_name(ns)?;
        Ok(FullyQualifiedName::new(ns, path))
    }
}

impl fmt::Display for FullyQualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}/{}", self.namespace, self.path)
    }
}

/// `{path, name}` as rules show their trigger and action (`path` is `ns` or `ns/pkg`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathName {
    pub path: String,
    pub name: String,
}

impl From<&FullyQualifiedName> for PathName {
    fn from(f: &FullyQualifiedName) -> Self {
        let path = match &f.path.package {
            Some(p) => format!("{}/{p}", f.namespace),
            None => f.namespace.clone(),
        };
        PathName {
            path,
            name: f.path.name.clone(),
        }
    }
}

impl PathName {
    pub fn to_fqn(&self) -> Result<FullyQualifiedName, ModelError> {
        FullyQualifiedName::parse(&format!("/{}/{}", self.path, self.name), "_")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_openwhisk_rule() {
        for ok in ["a", "hello", "a b", "x@y.z", "a&b", "a-", "_x", "9"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", " a", "a ", "-a", "a/b", "a$", "é"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(validate_name(&"a".repeat(256)).is_ok());
        assert!(validate_name(&"a".repeat(257)).is_err());
    }

    #[test]
    fn fully_qualified_names_resolve_defaults() {
        let f = FullyQualifiedName::parse("/whisk.system/utils/echo", "guest").unwrap();
        assert_eq!(f.namespace, "whisk.system");
        assert_eq!(f.path.key(), "utils/echo");
        let f = FullyQualifiedName::parse("/_/a", "guest").unwrap();
        assert_eq!(f.to_string(), "/guest/a");
        let f = FullyQualifiedName::parse("p/a", "guest").unwrap();
        assert_eq!(f.to_string(), "/guest/p/a");
        assert!(FullyQualifiedName::parse("/a/b/c/d", "guest").is_err());
        let pn = PathName::from(&f);
        assert_eq!(pn.path, "guest/p");
        assert_eq!(pn.to_fqn().unwrap(), f);
    }
}
