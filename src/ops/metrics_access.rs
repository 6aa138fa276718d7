//! Who may read `metrics --listen`: TLS, client certificates (mTLS) and a
//! bearer token. The exposition names every shaped pod on the node, its
//! namespace and its traffic, so a DaemonSet that serves it beyond the node
//! must be able to serve it to Prometheus alone.
//!
//! TLS is rustls (through tokio-rustls, on the `ring` provider: aws-lc-rs,
//! rustls' default, builds a C library with cmake at every clean build).
//! PEM files are parsed by rustls-pki-types, which rustls itself uses (the
//! older rustls-pemfile is no longer maintained). Every file is read and
//! checked at start, so a bad Secret stops the container with the reason
//! instead of failing every scrape; the token file is also re-read when it
//! changes, so a rotated Secret takes effect without a restart.

use std::fmt::Display;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

/// The files `metrics --listen` was given (each flag's value).
#[derive(Debug, Default, Clone)]
pub struct AccessFiles {
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub bearer_token_file: Option<PathBuf>,
}

/// What a connection and a request must show, loaded from AccessFiles.
pub struct Access {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Whether the TLS handshake requires a client certificate.
    pub client_certificates: bool,
    pub token: Option<Arc<BearerToken>>,
}

impl AccessFiles {
    /// Refuses combinations that cannot mean what was asked, before any file is read.
    pub fn check(&self) -> Result<()> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => bail!("--tls-cert needs --tls-key: give the server's certificate and its private key (PEM files), or neither"),
            (None, Some(_)) => bail!("--tls-key needs --tls-cert: give the server's certificate and its private key (PEM files), or neither"),
            _ => {}
        }
        if self.client_ca.is_some() && self.tls_cert.is_none() {
            bail!("--client-ca needs --tls-cert and --tls-key: client certificates are checked in the TLS handshake");
        }
        Ok(())
    }

    /// Reads and checks every file: a missing, unreadable or invalid one is
    /// an error that names it.
    pub fn load(&self) -> Result<Access> {
        self.check()?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(server_config(cert, key, self.client_ca.as_deref())?),
            _ => None,
        };
        let token = match &self.bearer_token_file {
            Some(path) => Some(Arc::new(BearerToken::load(path)?)),
            None => None,
        };
        Ok(Access {
            tls: tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c))),
            client_certificates: self.client_ca.is_some(),
            token,
        })
    }
}

fn read_file(flag: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))
}

/// Every certificate in a PEM file; none is an error.
fn certificates(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read_file(flag, path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{flag} {} is not valid PEM: {}", path.display(), pem_error(&e)))?;
    if certs.is_empty() {
        bail!("{flag} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display());
    }
    Ok(certs)
}

/// A PEM error without the raw bytes pem::Error's Display prints.
fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { .. } => "a section has no END line".into(),
        Error::IllegalSectionStart { .. } => "a BEGIN line is malformed".into(),
        Error::Base64Decode(_) => "a section is not base64".into(),
        other => other.to_string(),
    }
}

fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<rustls::ServerConfig> {
    let chain = certificates("--tls-cert", cert)?;
    let key_bytes = read_file("--tls-key", key)?;
    let private_key = match PrivateKeyDer::from_pem_slice(&key_bytes) {
        Ok(k) => k,
        Err(rustls_pki_types::pem::Error::NoItemsFound) => bail!(
            "--tls-key {} holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)",
            key.display()
        ),
        Err(e) => bail!("--tls-key {} is not valid PEM: {}", key.display(), pem_error(&e)),
    };
    // rustls 0.23.48 deprecates this provider for its lack of post-quantum
    // key exchange, which only aws-lc-rs has; a scrape's secrecy on the
    // cluster network does not justify a cmake-built C library in every build.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates("--client-ca", ca)? {
                roots.add(c).with_context(|| format!("--client-ca {} holds a certificate that is not valid", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("cannot verify client certificates against --client-ca {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, private_key).with_context(|| {
        format!("--tls-cert {} and --tls-key {} are not a valid certificate and its private key", cert.display(), key.display())
    })?;
    // hyper serves HTTP/1.1 only here; saying so spares clients an h2 attempt.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What a request's Authorization header shows.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No `Authorization: Bearer` header: 401, and WWW-Authenticate says how.
    Unauthenticated,
    /// A bearer token that is not the one: 403.
    Forbidden,
}

/// The token scrapers must send, from a file (a Kubernetes Secret's key),
/// re-read whenever the file changes (its mtime, size or inode: a Secret
/// volume swaps a symlink to new files), so a rotated Secret takes effect
/// at the next scrape.
pub struct BearerToken {
    path: PathBuf,
    current: Mutex<Loaded>,
}

struct Loaded {
    token: Vec<u8>,
    stamp: Stamp,
    /// The stamp of a change that could not be read, so it is warned about once.
    failed: Option<Stamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: (u64, u64),
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp { modified: m.modified().ok(), len: m.len(), inode: (m.dev(), m.ino()) })
}

fn read_token(path: &Path) -> Result<(Vec<u8>, Stamp)> {
    let stamp = stamp(path).with_context(|| format!("cannot read --bearer-token-file {}", path.display()))?;
    let bytes = read_file("--bearer-token-file", path)?;
    let token = bytes.trim_ascii().to_vec();
    if token.is_empty() {
        bail!("--bearer-token-file {} is empty: a scraper could not be told from anyone", path.display());
    }
    if token.iter().any(|b| !b.is_ascii_graphic()) {
        bail!("--bearer-token-file {} holds spaces or characters an HTTP header cannot carry", path.display());
    }
    Ok((token, stamp))
}

impl BearerToken {
    pub fn load(path: &Path) -> Result<Self> {
        let (token, stamp) = read_token(path)?;
        Ok(Self { path: path.to_path_buf(), current: Mutex::new(Loaded { token, stamp, failed: None }) })
    }

    /// The token now: re-read if the file changed. A change that cannot be
    /// read (a Secret half rotated, an empty file) keeps the last good token.
    fn current(&self) -> Vec<u8> {
        let mut loaded = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match stamp(&self.path) {
            Ok(now) if now == loaded.stamp || Some(&now) == loaded.failed.as_ref() => {}
            Ok(now) => match read_token(&self.path) {
                Ok((token, stamp)) => {
                    log::info!("metrics: re-read the bearer token from {}", self.path.display());
                    *loaded = Loaded { token, stamp, failed: None };
                }
                Err(e) => {
                    log::warn!("metrics: {e:#}; the last token read stays in use");
                    loaded.failed = Some(now);
                }
            },
            Err(e) => {
                if loaded.failed.is_none() {
                    log::warn!("metrics: cannot read --bearer-token-file {}: {e}; the last token read stays in use", self.path.display());
                    loaded.failed = Some(loaded.stamp.clone());
                }
            }
        }
        loaded.token.clone()
    }

    /// Checks a request's Authorization header value.
    pub fn verdict(&self, authorization: Option<&[u8]>) -> Verdict {
        let Some(value) = authorization else { return Verdict::Unauthenticated };
        let value = value.trim_ascii();
        // The scheme is case-insensitive (RFC 9110 11.1).
        if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
            return Verdict::Unauthenticated;
        }
        if same_secret(value[7..].trim_ascii(), &self.current()) {
            Verdict::Allowed
        } else {
            Verdict::Forbidden
        }
    }
}

/// Compares two secrets in time that depends on their lengths only, not on
/// where they first differ, so that a client cannot find the token byte by
/// byte from response times.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for i in 0..given.len().max(expected.len()) {
        let a = given.get(i).copied().unwrap_or(0);
        let b = expected.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box(a ^ b);
    }
    std::hint::black_box(diff) == 0
}

/// A warning that repeats at most once a minute, saying how many times it
/// was suppressed; every occurrence is logged at debug. For what any client
/// can cause (a failed TLS handshake), so that a port scanner cannot flood
/// the log.
pub struct Throttled {
    what: &'static str,
    state: Mutex<(Option<Instant>, u64)>,
}

const THROTTLE: Duration = Duration::from_secs(60);

impl Throttled {
    pub const fn new(what: &'static str) -> Self {
        Self { what, state: Mutex::new((None, 0)) }
    }

    pub fn note(&self, detail: impl Display) {
        log::debug!("metrics: {}: {detail}", self.what);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, suppressed) = &mut *state;
        if last.is_some_and(|t| t.elapsed() < THROTTLE) {
            *suppressed += 1;
            return;
        }
        let more = if *suppressed > 0 { format!(" ({suppressed} more in the last minute, not logged)") } else { String::new() };
        log::warn!("metrics: {}: {detail}{more}", self.what);
        *last = Some(Instant::now());
        *suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
        assert!(!same_secret(b"abc\0", b"abc"));
    }

    #[test]
    fn flags_that_go_together_are_refused_alone() {
        let p = || Some(PathBuf::from("/x"));
        let e = AccessFiles { tls_cert: p(), ..Default::default() }.check().unwrap_err().to_string();
        assert!(e.contains("--tls-key"), "{e}");
        assert!(AccessFiles { tls_key: p(), ..Default::default() }.check().is_err());
        let e = AccessFiles { client_ca: p(), ..Default::default() }.check().unwrap_err().to_string();
        assert!(e.contains("--client-ca needs"), "{e}");
        assert!(AccessFiles { tls_cert: p(), tls_key: p(), client_ca: p(), ..Default::default() }.check().is_ok());
        assert!(AccessFiles { bearer_token_file: p(), ..Default::default() }.check().is_ok());
    }

    #[test]
    fn the_authorization_header_is_read_as_rfc_6750_says() {
        let dir = std::env::temp_dir().join(format!("brl-token-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let t = BearerToken::load(&file).unwrap();
        assert_eq!(t.verdict(None), Verdict::Unauthenticated);
        assert_eq!(t.verdict(Some(b"Basic czNjcmV0")), Verdict::Unauthenticated);
        assert_eq!(t.verdict(Some(b"Bearer s3cret")), Verdict::Allowed);
        assert_eq!(t.verdict(Some(b"bearer  s3cret ")), Verdict::Allowed);
        assert_eq!(t.verdict(Some(b"Bearer s3cre")), Verdict::Forbidden);
        assert_eq!(t.verdict(Some(b"Bearer ")), Verdict::Unauthenticated, "no token at all");
        std::fs::write(&file, "").unwrap();
        assert_eq!(t.verdict(Some(b"Bearer s3cret")), Verdict::Allowed, "an empty file keeps the last token");
        assert!(BearerToken::load(&file).err().expect("an empty file is refused").to_string().contains("empty"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
