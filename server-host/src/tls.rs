//! HTTPS for the web page: the page and its WASM are the code that derives keys from
//! passphrases, so on a network that is not fully trusted they must arrive unaltered.
//!
//! Two sources of a certificate:
//! - `--tls`: a self-signed certificate made on the first start and kept in
//!   `DATA/tls/` (`cert.pem`, and `key.pem` readable by the owner only), so its
//!   fingerprint stays the same across restarts and users can compare it once with the
//!   one the server prints;
//! - `--tls-cert PATH --tls-key PATH`: a certificate chain and key in PEM, for example
//!   from the LAN's own certificate authority.
//!
//! Only the HTTP listener uses TLS. The device port does not need it: devices carry no
//! code from the server, and every frame is already sealed with a session key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateSource {
    /// Made on first start and kept in the data directory.
    SelfSigned,
    /// Given by the administrator, in PEM.
    Files {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// The private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
}

/// Why TLS could not be set up.
#[derive(Debug)]
pub enum TlsError {
    /// Reading or writing a certificate or key file failed.
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: std::io::Error,
    },
    /// A file is not the PEM it should be.
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected and not found.
        problem: String,
    },
    /// Making the self-signed certificate failed.
    Generate(rcgen::Error),
    /// rustls refused the certificate and key (a key that does not match, say).
    Config(rustls::Error),
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io { path, error } => write!(f, "{}: {error}", path.display()),
            Self::Pem { path, problem } => write!(f, "{}: {problem}", path.display()),
            Self::Generate(e) => write!(f, "cannot make a self-signed certificate: {e}"),
            Self::Config(e) => write!(f, "the certificate and key cannot be used: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// A ready TLS acceptor and what to tell people about it.
#[derive(Clone)]
pub struct Tls {
    /// Wraps accepted connections.
    pub acceptor: TlsAcceptor,
    /// SHA-256 of the leaf certificate (DER), as browsers show it.
    pub fingerprint: [u8; 32],
    /// The certificate file in use.
    pub cert_path: PathBuf,
    /// Whether this start made the certificate.
    pub generated: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("fingerprint", &format_fingerprint(&self.fingerprint))
            .field("cert_path", &self.cert_path)
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

/// `AB:CD:...`: the form browsers and `openssl x509 -fingerprint -sha256` print.
pub fn format_fingerprint(fingerprint: &[u8; 32]) -> String {
    let hex: Vec<String> = fingerprint.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// The self-signed certificate's files in a data directory.
pub fn self_signed_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Loads (or, for [`CertificateSource::SelfSigned`] on first start, makes) the
/// certificate and builds the acceptor.
pub fn load(source: &CertificateSource, data_dir: &Path, names: &[String]) -> Result<Tls, TlsError> {
    let (cert_path, key_path, generated) = match source {
        CertificateSource::Files { cert, key } => (cert.clone(), key.clone(), false),
        CertificateSource::SelfSigned => {
            let (cert, key) = self_signed_paths(data_dir);
            let generated = if cert.exists() && key.exists() {
                false
            } else {
                generate(&cert, &key, names)?;
                true
            };
            (cert, key, generated)
        }
    };
    let chain = read_chain(&cert_path)?;
    let key = read_key(&key_path)?;
    let leaf = chain
        .first()
        .ok_or_else(|| TlsError::Pem { path: cert_path.clone(), problem: "no CERTIFICATE block".into() })?;
    let fingerprint: [u8; 32] = Sha256::digest(leaf.as_ref()).into();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
    // WebSocket upgrades need HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls { acceptor: TlsAcceptor::from(Arc::new(config)), fingerprint, cert_path, generated })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|error| TlsError::Io { path: path.to_owned(), error })?;
    CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        problem: format!("not a PEM certificate chain ({e})"),
    })
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|error| TlsError::Io { path: path.to_owned(), error })?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| TlsError::Pem { path: path.to_owned(), problem: format!("no PEM private key ({e})") })
}

/// Makes a self-signed certificate for `names` (host names and addresses) and writes
/// it, the key first and readable by the owner only. Each file is written whole to a
/// temporary name and then renamed, so a crash leaves no half file behind.
fn generate(cert_path: &Path, key_path: &Path, names: &[String]) -> Result<(), TlsError> {
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(TlsError::Generate)?;
    let common_name = names.iter().find(|n| n.parse::<std::net::IpAddr>().is_err() && *n != "localhost");
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("Casataa on {}", common_name.map_or("localhost", String::as_str)),
    );
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "Casataa (self-signed)");
    let key = rcgen::KeyPair::generate().map_err(TlsError::Generate)?;
    let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
    if let Some(dir) = cert_path.parent() {
        std::fs::create_dir_all(dir).map_err(|error| TlsError::Io { path: dir.to_owned(), error })?;
    }
    write_atomically(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomically(cert_path, cert.pem().as_bytes(), 0o644)
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write as _;
    let io = |error| TlsError::Io { path: path.to_owned(), error };
    let temporary = path.with_extension("new");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&temporary).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(io)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("casataa-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_self_signed_certificate_is_made_once_and_kept_with_a_private_key_file() {
        let dir = scratch("kept");
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "box.local".to_owned()];
        let first = load(&CertificateSource::SelfSigned, &dir, &names).unwrap();
        assert!(first.generated);
        let second = load(&CertificateSource::SelfSigned, &dir, &names).unwrap();
        assert!(!second.generated);
        assert_eq!(first.fingerprint, second.fingerprint);
        let (cert, key) = self_signed_paths(&dir);
        assert_eq!(first.cert_path, cert);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // The same files given explicitly give the same certificate.
        let given = load(&CertificateSource::Files { cert, key }, &scratch("given"), &[]).unwrap();
        assert_eq!(given.fingerprint, first.fingerprint);
        assert!(!given.generated);
    }

    #[test]
    fn missing_or_mismatched_files_are_clear_errors() {
        let dir = scratch("bad");
        let missing = CertificateSource::Files { cert: dir.join("no-cert.pem"), key: dir.join("no-key.pem") };
        let error = load(&missing, &dir, &[]).unwrap_err().to_string();
        assert!(error.contains("no-cert.pem"), "{error}");

        let (a_cert, _) = self_signed_paths(&dir.join("a"));
        let (_, b_key) = self_signed_paths(&dir.join("b"));
        load(&CertificateSource::SelfSigned, &dir.join("a"), &["localhost".into()]).unwrap();
        load(&CertificateSource::SelfSigned, &dir.join("b"), &["localhost".into()]).unwrap();
        let mismatched = CertificateSource::Files { cert: a_cert.clone(), key: b_key };
        let error = load(&mismatched, &dir, &[]).unwrap_err().to_string();
        assert!(error.contains("cannot be used"), "{error}");

        let not_pem = CertificateSource::Files { cert: a_cert.clone(), key: a_cert };
        let error = load(&not_pem, &dir, &[]).unwrap_err().to_string();
        assert!(error.contains("no PEM private key"), "{error}");
    }

    #[test]
    fn fingerprints_print_like_browsers_show_them() {
        let mut fingerprint = [0u8; 32];
        fingerprint[0] = 0xAB;
        fingerprint[31] = 0x01;
        let shown = format_fingerprint(&fingerprint);
        assert!(shown.starts_with("AB:00:"));
        assert!(shown.ends_with(":00:01"));
        assert_eq!(shown.len(), 32 * 3 - 1);
    }
}
