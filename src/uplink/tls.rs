//! TLS for `mqtts://` with rustls (ring provider) and secrets that never reach a log.
//!
//! Trust comes from `ca_file` when set, else from the system's root store; a client
//! certificate and key enable mutual TLS. Secrets live in [`Secret`], whose `Debug` prints
//! `***`.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rumqttc::{TlsConfiguration, Transport};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Mqtt;

/// A secret read from a file; never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one call that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Reads a password file (trailing newline removed); warns if others can read it.
pub fn read_secret(path: &Path) -> Result<Secret, String> {
    warn_if_world_readable(path);
    std::fs::read_to_string(path)
        .map(|s| Secret(s.trim_end_matches(['\r', '\n']).to_string()))
        .map_err(|e| format!("cannot read password file {}: {e}", path.display()))
}

/// Logs a warning when a secret file is readable by group or others.
pub fn warn_if_world_readable(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(file = %path.display(), "secret file is readable by group or others; chmod 600 it");
            }
        }
    }
}

/// Builds the rustls transport for `mqtts://`.
pub fn transport(m: &Mqtt) -> Result<Transport, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &m.ca_file {
        Some(ca) => {
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("cannot read CA file {}: {e}", ca.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("bad certificate in {}: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("unusable CA certificate in {}: {e}", ca.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs();
            for cert in found {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&m.client_cert_file, &m.client_key_file) {
        (Some(cert), Some(key)) => {
            warn_if_world_readable(key);
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("cannot read client certificate {}: {e}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("bad client certificate {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read client key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate and key do not match: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(config),
    )))
}

/// System trust anchors from the usual Debian bundle locations.
fn rustls_native_certs() -> Vec<CertificateDer<'static>> {
    const BUNDLES: &[&str] = &[
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ];
    for bundle in BUNDLES {
        if let Ok(iter) = CertificateDer::pem_file_iter(bundle) {
            return iter.filter_map(Result::ok).collect();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_its_content() {
        let s = Secret("hunter2".into());
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{:?}", Some(s)), "Some(***)");
    }
}
