//! HTTP access to the Nimbus (OpenWhisk v1) REST API and the mapping of failures to [`CliError`].

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use crate::error::{CliError, CliResult};
use crate::exit::Exit;

/// Response header carrying the activation id of an invoke or a fire.
pub const ACTIVATION_ID_HEADER: &str = "x-openwhisk-activation-id";

/// Checks and completes an apihost: a bare `host:port` gets `http://`; `https://` is refused because
/// this build speaks plain HTTP only. Returns the apihost without a trailing slash.
pub fn normalize_apihost(raw: &str) -> CliResult<String> {
    let trimmed = raw.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(CliError::usage("the apihost is empty"));
    }
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    let lower = with_scheme.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(CliError::usage(format!(
            "apihost {with_scheme}: this build of the nimbus CLI speaks plain HTTP only (no TLS); \
             use an http:// apihost, e.g. http://127.0.0.1:3233"
        )));
    }
    if !lower.starts_with("http://") {
        return Err(CliError::usage(format!(
            "apihost {with_scheme}: unsupported scheme; use http://HOST:PORT"
        )));
    }
    match Url::parse(&with_scheme) {
        Ok(url) if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(with_scheme),
        Ok(_) => Err(CliError::usage(format!(
            "apihost {with_scheme} has no host"
        ))),
        Err(e) => Err(CliError::usage(format!(
            "apihost {with_scheme} is not a valid URL: {e}"
        ))),
    }
}

/// Builds `{apihost}/api/v1/{segments...}`, percent-encoding each segment. An empty last segment
/// gives a trailing slash.
pub fn api_url(apihost: &str, segments: &[&str]) -> CliResult<Url> {
    let mut url = Url::parse(&format!("{apihost}/api/v1"))
        .map_err(|e| CliError::usage(format!("apihost {apihost} is not a valid URL: {e}")))?;
    {
        let mut path = url
            .path_segments_mut()
            .map_err(|()| CliError::usage(format!("apihost {apihost} cannot carry a path")))?;
        path.pop_if_empty();
        path.extend(segments);
    }
    Ok(url)
}

/// A server reply: its status, its body (JSON; plain text as a JSON string; empty as null) and the
/// activation id header if present.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub activation_id: Option<String>,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The activation id from the header, else from the body's `activationId`.
    pub fn activation_id(&self) -> Option<String> {
        self.activation_id.clone().or_else(|| {
            self.body
                .get("activationId")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
    }

    /// Turns an error status into a [`CliError`].
    pub fn into_result(self) -> CliResult<Reply> {
        if self.status >= 400 {
            Err(api_error(self.status, &self.body))
        } else {
            Ok(self)
        }
    }
}

/// The error for an HTTP error reply: the server's `error` field and the status.
pub fn api_error(status: u16, body: &Value) -> CliError {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let detail = match body {
        Value::Object(map) => match map.get("error") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => body.to_string(),
        },
        Value::String(s) if !s.trim().is_empty() => s.trim().to_string(),
        Value::Null => "no details from the server".to_string(),
        other => other.to_string(),
    };
    let mut message = format!("{detail} (HTTP {status} {reason})");
    if status == 401 {
        message.push_str(
            "; check the key given with --auth, NIMBUS_AUTH or `nimbus property set --auth`",
        );
    }
    CliError::new(
        Exit::from_http_status(status),
        message.trim_end().to_string(),
    )
}

/// The error for a request that got no HTTP reply.
fn transport_error(apihost: &str, err: &reqwest::Error) -> CliError {
    // reqwest's own text names the URL; the innermost cause says what went wrong.
    let mut cause = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    let message = if err.is_connect() {
        format!(
            "cannot connect to the Nimbus API at {apihost}: {cause}. Is `nimbus serve` running \
             there? Set the endpoint with --apihost, NIMBUS_APIHOST or `nimbus property set --apihost`."
        )
    } else if err.is_timeout() {
        format!("the request to {apihost} timed out: {cause}")
    } else {
        format!("the request to {apihost} failed: {cause}")
    };
    CliError::new(Exit::ServerError, message)
}

/// A client for one apihost and key.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    apihost: String,
    user: String,
    password: String,
}

impl Client {
    /// `apihost` is normalized here; `auth` must be `UUID:KEY`.
    pub fn new(apihost: &str, auth: &str) -> CliResult<Client> {
        let apihost = normalize_apihost(apihost)?;
        let (user, password) = split_auth(auth)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("nimbus-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::usage(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client {
            http,
            apihost,
            user: user.to_string(),
            password: password.to_string(),
        })
    }

    pub fn apihost(&self) -> &str {
        &self.apihost
    }

    /// Sends a request and returns the reply whatever its status.
    pub async fn request(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> CliResult<Reply> {
        let url = api_url(&self.apihost, segments)?;
        let mut request = self
            .http
            .request(method, url)
            .basic_auth(&self.user, Some(&self.password));
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(&self.apihost, &e))?;
        let status = response.status().as_u16();
        let activation_id = response
            .headers()
            .get(ACTIVATION_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = response
            .bytes()
            .await
            .map_err(|e| transport_error(&self.apihost, &e))?;
        Ok(Reply {
            status,
            body: parse_body(&bytes),
            activation_id,
        })
    }

    /// Sends a request; an error status becomes a [`CliError`].
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> CliResult<Reply> {
        self.request(method, segments, query, body)
            .await?
            .into_result()
    }

    pub async fn get(&self, segments: &[&str], query: &[(&str, String)]) -> CliResult<Value> {
        Ok(self.call(Method::GET, segments, query, None).await?.body)
    }
}

/// Splits `UUID:KEY`.
pub fn split_auth(auth: &str) -> CliResult<(&str, &str)> {
    match auth.trim().split_once(':') {
        Some((user, key)) if !user.is_empty() && !key.is_empty() => Ok((user, key)),
        _ => Err(CliError::usage(
            "the auth key must have the form UUID:KEY (as printed by `nimbus serve`)",
        )),
    }
}

fn parse_body(bytes: &[u8]) -> Value {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn apihost_normalization() {
        assert_eq!(
            normalize_apihost("127.0.0.1:3233").unwrap(),
            "http://127.0.0.1:3233"
        );
        assert_eq!(
            normalize_apihost("http://localhost:3233/").unwrap(),
            "http://localhost:3233"
        );
        let err = normalize_apihost("https://example.org").unwrap_err();
        assert!(err.message.contains("plain HTTP"));
        assert!(normalize_apihost("ftp://x").is_err());
        assert!(normalize_apihost("  ").is_err());
    }

    #[test]
    fn url_building_encodes_segments() {
        let url = api_url(
            "http://h:1",
            &["namespaces", "_", "actions", "my pkg", "a&b"],
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "http://h:1/api/v1/namespaces/_/actions/my%20pkg/a&b"
        );
        let url = api_url(
            "http://h:1/prefix",
            &["namespaces", "_", "actions", "p", ""],
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "http://h:1/prefix/api/v1/namespaces/_/actions/p/"
        );
    }

    #[test]
    fn errors_carry_server_message_and_status() {
        let err = api_error(
            404,
            &json!({"error": "The requested resource does not exist.", "code": "x"}),
        );
        assert_eq!(err.exit, Exit::NotFound);
        assert_eq!(
            err.message,
            "The requested resource does not exist. (HTTP 404 Not Found)"
        );
        let err = api_error(409, &json!({"error": "resource already exists"}));
        assert_eq!(err.exit, Exit::Conflict);
        let err = api_error(401, &Value::Null);
        assert_eq!(err.exit, Exit::Unauthorized);
        assert!(err.message.contains("HTTP 401"));
        let err = api_error(503, &Value::String("down\n".into()));
        assert_eq!(err.exit, Exit::ServerError);
        assert_eq!(err.message, "down (HTTP 503 Service Unavailable)");
    }

    #[test]
    fn auth_split() {
        assert_eq!(split_auth("u:k:x").unwrap(), ("u", "k:x"));
        assert!(split_auth("nokey").is_err());
        assert!(split_auth(":k").is_err());
    }

    #[test]
    fn body_parsing() {
        assert_eq!(parse_body(b""), Value::Null);
        assert_eq!(parse_body(b"{\"a\":1}"), json!({"a": 1}));
        assert_eq!(parse_body(b"pong"), json!("pong"));
    }
}
