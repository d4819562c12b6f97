//! HTTPS for the emulator, as an array with a private CA serves it: a CA
//! made at start and a server certificate it signs for 127.0.0.1 and
//! localhost. Clients trust it through the CA's PEM (the host's `caFile`).

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// A private CA and the acceptor serving the certificate it signed.
#[derive(Clone)]
pub struct Pki {
    /// The CA certificate, PEM: what a client must trust.
    pub ca_pem: String,
    pub(crate) acceptor: TlsAcceptor,
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

impl Pki {
    pub fn generate() -> std::io::Result<Pki> {
        let ca_key = KeyPair::generate().map_err(|e| tls_error("CA key", e))?;
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "xms-emulator test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params
            .self_signed(&ca_key)
            .map_err(|e| tls_error("CA certificate", e))?;

        let key = KeyPair::generate().map_err(|e| tls_error("server key", e))?;
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .map_err(|e| tls_error("server names", e))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "xms-emulator");
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .map_err(|e| tls_error("server certificate", e))?;

        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("TLS versions", e))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| tls_error("TLS config", e))?;
        Ok(Pki {
            ca_pem: ca.pem(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}
