//! The server side of TLS for every listener (Kafka `SSL`/`SASL_SSL`, `amqp.tls_addr`,
//! `http.tls_addr`): `[tls]` read into rustls server configurations (`Certs`), and the one
//! process-wide holder of the configurations in effect, which SIGHUP reloads from the same
//! files.
//!
//! - Certificate chain and key from PEM files (PKCS#8, PKCS#1 or SEC1 keys); TLS 1.2 and
//!   1.3 with the `ring` provider.
//! - `tls.client_auth` (or a Kafka listener's own `client_auth`): `none` asks no
//!   certificate; `requested` asks one and verifies it against `ca_file` when presented;
//!   `required` refuses a client without a certificate the CA verified.
//! - ALPN: none for Kafka and AMQP; `http/1.1` for HTTPS.
//!
//! `install` runs once on the main thread at start-up (bad files are a start-up error
//! naming the key and the file); shards read the holder once per accepted TLS connection
//! (`current`), which is not the data path, so a `RwLock` is fine there. A reload swaps the
//! configurations: new connections get the new certificate, open ones keep the session
//! they have. A failed reload logs an error and keeps the old configurations.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::{ClientAuth, TlsConfig};

/// What went wrong reading `[tls]`: the key and the file, and why.
#[derive(Debug, thiserror::Error)]
#[error("{key} = {path}: {why}")]
pub struct TlsError {
    pub key: &'static str,
    pub path: String,
    pub why: String,
}

/// The server configurations made from one reading of `[tls]`: one per client-certificate
/// rule (a Kafka listener may have its own, `kafka.listeners[].client_auth`), and HTTPS.
pub struct Certs {
    /// Kafka and AMQP (no ALPN), by client-certificate rule: none, requested, required.
    by_auth: [Arc<ServerConfig>; 3],
    /// `tls.client_auth`: the rule of listeners without their own.
    default_auth: ClientAuth,
    /// HTTPS (ALPN `http/1.1`, `tls.client_auth`).
    pub http: Arc<ServerConfig>,
}

impl Certs {
    /// The configuration of a listener with client-certificate rule `auth` (`None`: the
    /// `tls.client_auth` default). Kafka and AMQP.
    pub fn server(&self, auth: Option<ClientAuth>) -> Arc<ServerConfig> {
        let i = match auth.unwrap_or(self.default_auth) {
            ClientAuth::None => 0,
            ClientAuth::Requested => 1,
            ClientAuth::Required => 2,
        };
        self.by_auth[i].clone()
    }
}

/// Which of the configurations a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    None,
    Http1,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn error(key: &'static str, path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError {
        key,
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// Every certificate in a PEM file (at least one).
fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(key, path, e))?;
    if certs.is_empty() {
        return Err(error(key, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// Reads `[tls]` into server configurations.
pub fn load(config: &TlsConfig) -> Result<Certs, TlsError> {
    let chain = read_certs("tls.cert_file", &config.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|e| error("tls.key_file", &config.key_file, e))?;
    let ca = &config.ca_file;
    // The CA, read once for every rule that verifies client certificates (none without
    // `ca_file`: then `requested` asks for nothing, and validation refuses `required`).
    let roots = if ca.as_os_str().is_empty() {
        None
    } else {
        let mut roots = RootCertStore::empty();
        for cert in read_certs("tls.ca_file", ca)? {
            roots.add(cert).map_err(|e| error("tls.ca_file", ca, e))?;
        }
        Some(Arc::new(roots))
    };
    let make = |auth: ClientAuth, alpn: Alpn| -> Result<Arc<ServerConfig>, TlsError> {
        let verifier = match (auth, &roots) {
            (ClientAuth::None, _) | (_, None) => None,
            (auth, Some(roots)) => {
                let builder =
                    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
                let builder = if auth == ClientAuth::Requested {
                    builder.allow_unauthenticated()
                } else {
                    builder
                };
                Some(builder.build().map_err(|e| error("tls.ca_file", ca, e))?)
            }
        };
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| error("tls.cert_file", &config.cert_file, e))?;
        let builder = match verifier {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        };
        let mut server = builder
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| error("tls.key_file", &config.key_file, e))?;
        if alpn == Alpn::Http1 {
            server.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        Ok(Arc::new(server))
    };
    Ok(Certs {
        by_auth: [
            make(ClientAuth::None, Alpn::None)?,
            make(ClientAuth::Requested, Alpn::None)?,
            make(ClientAuth::Required, Alpn::None)?,
        ],
        default_auth: config.client_auth,
        http: make(config.client_auth, Alpn::Http1)?,
    })
}

/// The configurations in effect (`None` until `install`, and when no listener uses TLS).
static CURRENT: RwLock<Option<Arc<Certs>>> = RwLock::new(None);

/// Reads `[tls]` and makes it the configuration in effect, when a listener uses TLS.
pub fn install(config: &crate::config::Config) -> Result<(), TlsError> {
    if !uses_tls(config) {
        return Ok(());
    }
    let certs = load(&config.tls)?;
    *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(certs));
    Ok(())
}

/// Some listener serves TLS.
pub fn uses_tls(config: &crate::config::Config) -> bool {
    !config.amqp.tls_addr.is_empty()
        || !config.http.tls_addr.is_empty()
        || config
            .kafka
            .effective_listeners()
            .iter()
            .any(|l| l.protocol().tls())
}

/// The configurations in effect, for a connection just accepted on a TLS listener.
pub fn current() -> Option<Arc<Certs>> {
    CURRENT.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Reads the files again; on success new connections get the new certificates, on failure
/// the old ones stay (and the error is returned for the log).
pub fn reload(config: &TlsConfig) -> Result<(), TlsError> {
    let certs = load(config)?;
    *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(certs));
    Ok(())
}

/// Reloads `[tls]` on every SIGHUP, from a thread of its own (as `runtime::shutdown` does
/// for SIGINT/SIGTERM). Installed only when some listener uses TLS, so SIGHUP keeps its
/// default meaning otherwise.
pub fn reload_on_sighup(config: &crate::config::Config) -> std::io::Result<()> {
    if !uses_tls(config) {
        return Ok(());
    }
    let tls = config.tls.clone();
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
    std::thread::Builder::new()
        .name("tls-reload".into())
        .spawn(move || {
            for _ in signals.forever() {
                match reload(&tls) {
                    Ok(()) => log::info!(
                        "SIGHUP: TLS certificate reloaded from {} (new connections use it)",
                        tls.cert_file.display()
                    ),
                    Err(e) => {
                        log::error!("SIGHUP: TLS reload failed, keeping the old certificate: {e}")
                    }
                }
            }
        })?;
    Ok(())
}

/// The verified client certificate's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSubject {
    /// RFC 4514 form, most specific first: `CN=alice,OU=eng,O=Example`, as Kafka's
    /// default principal builder and RabbitMQ's `ssl_cert_login_from = distinguished_name`
    /// write it.
    pub dn: String,
    /// The (last) common name, if the subject has one.
    pub cn: Option<String>,
}

impl PeerSubject {
    /// The subject of a DER certificate; `None` when it does not parse.
    pub fn of(der: &[u8]) -> Option<PeerSubject> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let mut rdns = Vec::new();
        let mut cn = None;
        for rdn in subject.iter() {
            let mut parts = Vec::new();
            for attr in rdn.iter() {
                let oid = attr.attr_type().to_id_string();
                let short = short_name(&oid);
                let value = match attr.as_str() {
                    Ok(s) => escape(s),
                    // Not a string type: the value's bytes in hex (RFC 4514 §2.4).
                    Err(_) => format!("#{}", hex(attr.as_slice())),
                };
                if short == Some("CN") {
                    cn = attr.as_str().ok().map(str::to_owned);
                }
                parts.push(format!("{}={value}", short.unwrap_or(&oid)));
            }
            rdns.push(parts.join("+"));
        }
        rdns.reverse();
        Some(PeerSubject {
            dn: rdns.join(","),
            cn,
        })
    }
}

/// RFC 4514's short names (those Java's `X500Principal` also writes).
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Escapes an attribute value as RFC 4514 §2.4 asks.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_values_are_escaped_as_rfc_4514_asks() {
        assert_eq!(escape("alice"), "alice");
        assert_eq!(escape("Smith, John"), "Smith\\, John");
        assert_eq!(escape("#1 a+b "), "\\#1 a\\+b\\ ");
        assert_eq!(escape(" x"), "\\ x");
    }

    #[test]
    fn a_subject_prints_most_specific_first_with_its_cn() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "DE");
        dn.push(rcgen::DnType::OrganizationName, "Example, Inc");
        dn.push(rcgen::DnType::OrganizationalUnitName, "eng");
        dn.push(rcgen::DnType::CommonName, "alice");
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let subject = PeerSubject::of(cert.der()).unwrap();
        assert_eq!(subject.dn, "CN=alice,OU=eng,O=Example\\, Inc,C=DE");
        assert_eq!(subject.cn.as_deref(), Some("alice"));
        assert_eq!(PeerSubject::of(b"not a certificate"), None);
    }

    #[test]
    fn bad_files_name_the_key_and_the_file() {
        let config = TlsConfig {
            cert_file: "/nonexistent/cert.pem".into(),
            key_file: "/nonexistent/key.pem".into(),
            ..TlsConfig::default()
        };
        let e = load(&config).err().unwrap();
        assert_eq!(e.key, "tls.cert_file");
        assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
    }
}
