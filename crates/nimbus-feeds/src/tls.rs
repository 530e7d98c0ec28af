//! TLS client settings shared by the message feeds (`mqtts://`, NATS `tls://`): rustls with the
//! ring provider, verifying the server against a feed's `caCert` (PEM) or the system's roots,
//! and presenting `clientCert` + `clientKey` (PEM) when the broker wants a client certificate
//! (mutual TLS, as AWS IoT Core and most managed IoT brokers do).

use crate::error::{FeedResult, invalid};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{Map, Value};
use std::sync::Arc;

/// The TLS parameters of a feed (all PEM).
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsSettings {
    pub(crate) ca_cert: Option<String>,
    pub(crate) client_cert: Option<String>,
    pub(crate) client_key: Option<String>,
}

fn pem_param(p: &Map<String, Value>, k: &str) -> FeedResult<Option<String>> {
    match p.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(v)) if !v.trim().is_empty() => Ok(Some(v.clone())),
        Some(_) => Err(invalid(format!("'{k}' must be a PEM string."))),
    }
}

/// Reads and checks `caCert`, `clientCert` and `clientKey`; they are only for TLS URLs
/// (`scheme`, e.g. `mqtts://`, names the one to use).
pub(crate) fn parse_settings(
    p: &Map<String, Value>,
    tls: bool,
    scheme: &str,
) -> FeedResult<TlsSettings> {
    let s = TlsSettings {
        ca_cert: pem_param(p, "caCert")?,
        client_cert: pem_param(p, "clientCert")?,
        client_key: pem_param(p, "clientKey")?,
    };
    let any = s.ca_cert.is_some() || s.client_cert.is_some() || s.client_key.is_some();
    if any && !tls {
        return Err(invalid(format!(
            "'caCert', 'clientCert' and 'clientKey' are for {scheme} URLs."
        )));
    }
    if let Some(pem) = &s.ca_cert {
        pem_certificates(pem)?;
    }
    match (&s.client_cert, &s.client_key) {
        (Some(c), Some(k)) => {
            client_identity(c, k)?;
        }
        (None, None) => {}
        _ => {
            return Err(invalid(
                "'clientCert' and 'clientKey' go together (the client certificate and its key).",
            ));
        }
    }
    if tls {
        // Everything rustls checks up front (e.g. an X.509 v1 client certificate, a key that
        // does not fit) fails the CREATE rather than a feed that never starts.
        client_config(&s).map_err(invalid)?;
    }
    Ok(s)
}

/// The client certificate chain and its private key.
fn client_identity(
    cert: &str,
    key: &str,
) -> FeedResult<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    use rustls::pki_types::pem::PemObject as _;
    let chain = pem_certificates(cert)
        .map_err(|e| invalid(e.to_string().replace("'caCert'", "'clientCert'")))?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| {
        invalid(format!(
            "'clientKey' is not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"
        ))
    })?;
    Ok((chain, key))
}

/// The certificates of a PEM bundle; an error names what is wrong with it.
pub(crate) fn pem_certificates(pem: &str) -> FeedResult<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject as _;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("'caCert' is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            "'caCert' holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----).",
        ));
    }
    Ok(certs)
}

/// A client configuration trusting `caCert` when given, else the system's roots, and
/// presenting the client certificate when given.
pub(crate) fn client_config(s: &TlsSettings) -> Result<rustls::ClientConfig, String> {
    client_config_for(s, None)
}

/// As [`client_config`]; with `bound_name`, the server certificate is verified for that name
/// whatever address the connection was made to (the feed dials the address the egress policy
/// checked, so the TLS library only knows the IP).
pub(crate) fn client_config_for(
    s: &TlsSettings,
    bound_name: Option<&str>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match s.ca_cert.as_deref() {
        Some(pem) => {
            for cert in pem_certificates(pem).map_err(|e| e.to_string())? {
                roots
                    .add(cert)
                    .map_err(|e| format!("'caCert' is not a usable CA certificate: {e}"))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A system bundle may hold certificates rustls cannot use; skip those.
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match bound_name {
        None => builder.with_root_certificates(roots),
        Some(name) => {
            let name = ServerName::try_from(name.to_string())
                .map_err(|e| format!("'{name}' is not a valid TLS server name: {e}"))?;
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("no usable CA certificate: {e}"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(BoundName { inner, name }))
        }
    };
    match (&s.client_cert, &s.client_key) {
        (Some(c), Some(k)) => {
            let (chain, key) = client_identity(c, k).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the client certificate cannot be used: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Standard WebPKI verification, for a fixed server name instead of the one the connection
/// was opened with.
#[derive(Debug)]
struct BoundName {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for BoundName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
