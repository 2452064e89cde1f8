//! TLS client settings: rustls with the ring provider, trusting either the
//! system's root certificates (the server's webhook deliveries, the agent
//! by default) or only the CA certificates of one PEM file (the agent's
//! `--ca-file`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Which certificates a client trusts a server's chain to.
#[derive(Clone, Copy, Debug)]
pub enum Trust<'a> {
    /// The system's root certificates.
    SystemRoots,
    /// Only the CA certificates in this PEM file.
    CaFile(&'a Path),
}

/// A client configuration trusting `trust`. HTTP/1.1 only: webhook POSTs,
/// WebSocket upgrades and the agent's file transfers need nothing else.
pub fn client_config(trust: Trust<'_>) -> Result<Arc<ClientConfig>, String> {
    let roots = match trust {
        Trust::SystemRoots => system_roots()?,
        Trust::CaFile(path) => ca_file_roots(path)?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn system_roots() -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(format!("no system root certificates found{why}"));
    }
    Ok(roots)
}

fn ca_file_roots(path: &Path) -> Result<RootCertStore, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused_clearly() {
        let dir = tempfile::tempdir().expect("dir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let e = client_config(Trust::CaFile(&empty)).expect_err("refused");
        assert!(e.contains("no PEM certificate"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = client_config(Trust::CaFile(&missing)).expect_err("refused");
        assert!(e.contains("missing.pem"), "{e}");
    }
}
