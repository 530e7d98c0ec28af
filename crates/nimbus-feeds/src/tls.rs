//! TLS client settings shared by the message feeds (`mqtts://`, NATS `tls://`): rustls with the
//! ring provider, verifying the server against a feed's `caCert` (PEM) or the system's roots.

use crate::error::{FeedResult, invalid};
use rustls::pki_types::CertificateDer;
use std::sync::Arc;

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

/// A client configuration trusting `ca_cert` (PEM) when given, else the system's roots.
pub(crate) fn client_config(ca_cert: Option<&str>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_cert {
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
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}
