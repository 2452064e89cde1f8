//! TLS client settings for webhook delivery (`https://` receivers): rustls
//! with the ring provider, trusting the system's root certificates. (The
//! worker agent has its own, which can trust a CA file instead.)

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

/// A client configuration trusting the system's roots. HTTP/1.1 only:
/// webhook POSTs need nothing else.
pub fn client_config() -> Result<Arc<ClientConfig>, String> {
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
