//! Entity names as users type them (`a`, `pkg/a`, `/ns/a`, `/ns/pkg/a`, `ns/pkg/a`) and their
//! fully qualified form `/ns[/pkg]/name`.

use crate::error::{CliError, CliResult};

/// A parsed entity name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityName {
    pub namespace: String,
    pub package: Option<String>,
    pub name: String,
}

impl EntityName {
    /// Parses an action-style name, which may sit in a package.
    pub fn parse(raw: &str, default_namespace: &str) -> CliResult<EntityName> {
        let trimmed = raw.trim();
        let invalid = || {
            CliError::usage(format!(
                "invalid name {raw:?}: use NAME, PACKAGE/NAME, /NAMESPACE/NAME or /NAMESPACE/PACKAGE/NAME"
            ))
        };
        let parts: Vec<&str> = trimmed
            .strip_prefix('/')
            .unwrap_or(trimmed)
            .split('/')
            .collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(invalid());
        }
        let owned = |s: &str| s.to_string();
        let (namespace, package, name) = match (trimmed.starts_with('/'), parts.as_slice()) {
            (false, [name]) => (default_namespace.to_string(), None, owned(name)),
            (false, [package, name]) => (
                default_namespace.to_string(),
                Some(owned(package)),
                owned(name),
            ),
            (_, [namespace, package, name]) => {
                (owned(namespace), Some(owned(package)), owned(name))
            }
            (true, [namespace, name]) => (owned(namespace), None, owned(name)),
            _ => return Err(invalid()),
        };
        Ok(EntityName {
            namespace,
            package,
            name,
        })
    }

    /// Parses the name of an entity that cannot sit in a package (trigger, rule, package):
    /// `NAME` or `/NAMESPACE/NAME`.
    pub fn parse_unpackaged(
        raw: &str,
        default_namespace: &str,
        what: &str,
    ) -> CliResult<EntityName> {
        let parsed = EntityName::parse(raw, default_namespace)?;
        if parsed.package.is_some() {
            return Err(CliError::usage(format!(
                "invalid {what} name {raw:?}: use NAME or /NAMESPACE/NAME"
            )));
        }
        Ok(parsed)
    }

    /// `/ns[/pkg]/name`.
    pub fn qualified(&self) -> String {
        match &self.package {
            Some(package) => format!("/{}/{}/{}", self.namespace, package, self.name),
            None => format!("/{}/{}", self.namespace, self.name),
        }
    }

    /// `[pkg/]name`, the form the activation list's `name` filter takes.
    pub fn relative(&self) -> String {
        match &self.package {
            Some(package) => format!("{package}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// The URL path segments of this entity in `collection`: `namespaces/ns/collection[/pkg]/name`.
    pub fn segments<'a>(&'a self, collection: &'a str) -> Vec<&'a str> {
        let mut segments = vec!["namespaces", self.namespace.as_str(), collection];
        if let Some(package) = &self.package {
            segments.push(package);
        }
        segments.push(&self.name);
        segments
    }

    /// The same name with `_` as namespace replaced by `namespace`.
    pub fn with_namespace_resolved(mut self, namespace: &str) -> EntityName {
        if self.namespace == "_" {
            self.namespace = namespace.to_string();
        }
        self
    }
}

/// Qualifies a name for a sequence component or a rule's action: `a` → `/ns/a`, `p/a` → `/ns/p/a`;
/// names that already start with `/` keep their namespace.
pub fn qualify(raw: &str, default_namespace: &str) -> CliResult<String> {
    Ok(EntityName::parse(raw, default_namespace)?.qualified())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> EntityName {
        EntityName::parse(raw, "_").unwrap()
    }

    #[test]
    fn parsing_forms() {
        assert_eq!(parse("a").qualified(), "/_/a");
        assert_eq!(parse("p/a").qualified(), "/_/p/a");
        assert_eq!(parse("/ns/a").qualified(), "/ns/a");
        assert_eq!(parse("/ns/p/a").qualified(), "/ns/p/a");
        assert_eq!(parse("ns/p/a").qualified(), "/ns/p/a");
        assert_eq!(parse("/whisk.system/utils/echo").namespace, "whisk.system");
        assert_eq!(parse("p/a").relative(), "p/a");
        assert_eq!(parse("/ns/a").relative(), "a");
        for bad in ["", "/", "/ns", "a//b", "a/", "/a/b/c/d", "w/x/y/z"] {
            assert!(EntityName::parse(bad, "_").is_err(), "{bad}");
        }
    }

    #[test]
    fn unpackaged_names() {
        assert_eq!(
            EntityName::parse_unpackaged("/ns/t", "_", "trigger")
                .unwrap()
                .qualified(),
            "/ns/t"
        );
        assert!(EntityName::parse_unpackaged("p/t", "_", "trigger").is_err());
    }

    #[test]
    fn qualification_for_sequences_and_rules() {
        assert_eq!(qualify("a", "_").unwrap(), "/_/a");
        assert_eq!(qualify("a", "guest").unwrap(), "/guest/a");
        assert_eq!(qualify("pkg/a", "_").unwrap(), "/_/pkg/a");
        assert_eq!(qualify("/other/a", "_").unwrap(), "/other/a");
        assert_eq!(qualify(" /other/p/a ", "_").unwrap(), "/other/p/a");
    }

    #[test]
    fn url_segments() {
        assert_eq!(
            parse("p/a").segments("actions"),
            ["namespaces", "_", "actions", "p", "a"]
        );
        assert_eq!(
            parse("/ns/t").segments("triggers"),
            ["namespaces", "ns", "triggers", "t"]
        );
        assert_eq!(
            parse("t").with_namespace_resolved("guest").qualified(),
            "/guest/t"
        );
    }
}
