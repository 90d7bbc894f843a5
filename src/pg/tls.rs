//! TLS for pgmedic's own sessions, with libpq's rules (`TlsSettings::effective`): when a root
//! certificate is there (`sslrootcert`, else `~/.postgresql/root.crt`) the chain is checked
//! against it in every mode that encrypts; without one, prefer and require encrypt without
//! checking and verify-ca/verify-full refuse to connect; verify-full also checks that the
//! certificate names the host; `sslrootcert=system` uses the system's roots. Client
//! certificates come from `sslcert`/`sslkey` or their `~/.postgresql` defaults.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{SslMode, TlsSettings};

/// A connector for `tls`; errors name the file at fault.
pub fn connector(tls: &TlsSettings) -> Result<MakeRustlsConnect, String> {
    let tls = &tls.effective()?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = if tls.verifies_chain() { Some(Arc::new(roots(tls)?)) } else { None };
    let verifier = Arc::new(LibpqVerifier {
        roots,
        check_name: tls.mode == SslMode::VerifyFull,
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(cert)?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("sslkey {}: {e}", key.display()))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| format!("sslcert/sslkey: {e}"))?
        }
        (None, _) => builder.with_no_client_auth(),
        (Some(cert), None) => {
            return Err(format!("certificate present, but not private key file for {}", cert.display()))
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?.collect();
    let certs = certs.map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

fn roots(tls: &TlsSettings) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match &tls.root_cert {
        Some(_) if tls.uses_system_roots() => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err("sslrootcert=system, but the system has no CA certificates".into());
            }
        }
        Some(path) => {
            for cert in read_certs(path)? {
                store.add(cert).map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
        }
        None => return Err("no root certificate to verify the server against".into()),
    }
    Ok(store)
}

#[derive(Debug)]
struct LibpqVerifier {
    /// `None`: encrypt, but accept any certificate (libpq's prefer and require).
    roots: Option<Arc<RootCertStore>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else { return Ok(ServerCertVerified::assertion()) };
        let cert = ParsedCertificate::try_from(end_entity)?;
        let algs = self.provider.signature_verification_algorithms.all;
        verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, algs)?;
        if self.check_name {
            verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
