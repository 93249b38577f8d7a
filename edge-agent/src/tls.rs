//! TLS material for the node's listeners (rustls, ring provider): a
//! configured certificate, or a self-signed one generated on first start
//! and kept in the data directory. Clients trust it by CA file or by
//! pinning its sha256 fingerprint.

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The crypto provider everything here uses.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain with its key.
pub(crate) struct Identity {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    /// Where the PEM certificate is (for clients to trust).
    pub(crate) cert_path: PathBuf,
}

impl Identity {
    /// sha256 of the leaf certificate, as colon-separated hex.
    pub(crate) fn fingerprint(&self) -> String {
        fingerprint(&self.chain[0])
    }

    /// Loads `cert`/`key`, or the generated pair in `data_dir/tls/`,
    /// generating it (for localhost and 127.0.0.1) if absent.
    pub(crate) fn load_or_generate(cert: Option<&Path>, key: Option<&Path>, data_dir: &Path) -> Result<Self> {
        let (cert_path, key_path) = match (cert, key) {
            (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
            _ => {
                let dir = data_dir.join("tls");
                let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
                if !c.exists() || !k.exists() {
                    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                    let generated = rcgen::generate_simple_self_signed(vec![
                        "localhost".to_string(),
                        "127.0.0.1".to_string(),
                        "::1".to_string(),
                    ])
                    .context("generating a self-signed certificate")?;
                    // A lone half of a pair is useless: replace both.
                    let _ = std::fs::remove_file(&k);
                    mote_runtime::receipt::write_private(&k, generated.key_pair.serialize_pem().as_bytes())
                        .with_context(|| format!("writing {}", k.display()))?;
                    std::fs::write(&c, generated.cert.pem()).with_context(|| format!("writing {}", c.display()))?;
                    tracing::info!(cert = %c.display(), "generated a self-signed certificate");
                }
                (c, k)
            }
        };
        let chain = CertificateDer::pem_file_iter(&cert_path)
            .with_context(|| format!("reading certificate {}", cert_path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing certificate {}", cert_path.display()))?;
        if chain.is_empty() {
            bail!("{} holds no certificate", cert_path.display());
        }
        let key =
            PrivateKeyDer::from_pem_file(&key_path).with_context(|| format!("reading key {}", key_path.display()))?;
        Ok(Self { chain, key, cert_path })
    }

    /// A rustls server config with the given ALPN protocols.
    pub(crate) fn server_config(&self, alpn: &[&[u8]]) -> Result<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .context("the certificate and key do not match")?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(cfg)
    }
}

/// sha256 of a certificate, colon-separated upper-case hex.
pub(crate) fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref()).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// How a client decides to trust the server.
#[derive(Clone, Debug)]
pub enum Trust {
    /// PEM file of trusted certificates (e.g. the node's generated cert).
    CaFile(PathBuf),
    /// The server's leaf certificate must have this sha256 fingerprint.
    Fingerprint(String),
}

/// A rustls client config for `trust` with the given ALPN protocols.
pub(crate) fn client_config(trust: &Trust, alpn: &[&[u8]]) -> Result<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let mut cfg = match trust {
        Trust::CaFile(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).with_context(|| format!("reading {}", path.display()))? {
                roots.add(cert.with_context(|| format!("parsing {}", path.display()))?)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Fingerprint(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { fingerprint: normalise(fp), provider: provider() }))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

fn normalise(fp: &str) -> String {
    fp.chars().filter(|c| c.is_ascii_hexdigit()).collect::<String>().to_ascii_uppercase()
}

/// Accepts exactly one leaf certificate (by sha256), and checks the
/// handshake signatures as usual.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if normalise(&fingerprint(end_entity)) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("server certificate does not match the pinned fingerprint".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
