//! Certificates by SNI, and the rustls server config built around them.

/// aHash: these maps are looked up per request or per handshake.
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
use std::sync::Arc;

use control_api::Certificate;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, StoresServerSessions, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::tickets::SharedTicketer;

/// ALPN protocols offered, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Resumption state shared by every config a node builds, so a config swap
/// does not invalidate the sessions clients hold.
pub(crate) struct Shared {
    session_storage: Arc<dyn StoresServerSessions>,
    pub(crate) ticketer: Option<Arc<SharedTicketer>>,
}

impl Shared {
    pub(crate) fn new() -> Self {
        let ticketer = match SharedTicketer::new() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "no TLS session ticketer; stateful resumption only");
                None
            }
        };
        Shared {
            session_storage: rustls::server::ServerSessionMemoryCache::new(8192),
            ticketer,
        }
    }
}

/// Chooses a certificate by SNI: exact names first, then a one-label
/// wildcard (`*.example.com` matches `a.example.com`, not `a.b.example.com`
/// nor `example.com`), then the default certificate (the one marked default,
/// else the first).
pub struct CertResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by what follows `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    names: Vec<String>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver")
            .field("certificates", &self.names)
            .finish_non_exhaustive()
    }
}

fn normalize_name(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Parses one certificate: chain and key from PEM, checking that the key
/// belongs to the first certificate.
pub fn load_certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("certificate chain: no certificate in PEM".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("private key: {e}"))?;
    let signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| format!("private key: {e}"))?;
    let ck = CertifiedKey::new(chain, signing_key);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(e) => Err(format!("certificate and key: {e}")),
    }
}

impl CertResolver {
    /// Compiles a snapshot's certificates; `Err` names the first one that
    /// does not parse.
    pub fn compile(certs: &[Certificate]) -> Result<Self, String> {
        let mut r = CertResolver {
            exact: HashMap::default(),
            wildcard: HashMap::default(),
            default: None,
            names: Vec::new(),
        };
        let mut first = None;
        for c in certs {
            let ck = Arc::new(
                load_certified_key(&c.cert_chain_pem, &c.private_key_pem)
                    .map_err(|e| format!("certificate {:?}: {e}", c.name))?,
            );
            r.names.push(c.name.clone());
            for name in &c.sni_names {
                let name = normalize_name(name);
                if let Some(suffix) = name.strip_prefix("*.") {
                    if suffix.is_empty() || suffix.contains('*') {
                        return Err(format!(
                            "certificate {:?}: bad wildcard name {name:?}",
                            c.name
                        ));
                    }
                    r.wildcard
                        .entry(suffix.to_string())
                        .or_insert_with(|| ck.clone());
                } else if name.is_empty() || name.contains('*') {
                    return Err(format!("certificate {:?}: bad SNI name {name:?}", c.name));
                } else {
                    r.exact.entry(name).or_insert_with(|| ck.clone());
                }
            }
            if c.default && r.default.is_none() {
                r.default = Some(ck.clone());
            }
            if first.is_none() {
                first = Some(ck);
            }
        }
        if r.default.is_none() {
            r.default = first;
        }
        Ok(r)
    }

    /// The certificate for `sni` (or the default one).
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = sni {
            let name = normalize_name(sni);
            if let Some(ck) = self.exact.get(&name) {
                return Some(ck.clone());
            }
            if let Some((_, rest)) = name.split_once('.')
                && let Some(ck) = self.wildcard.get(rest)
            {
                return Some(ck.clone());
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name())
    }
}

/// The client-certificate verifier of `settings`: none, or mTLS against
/// `client_ca_pem` (required unless `client_cert_optional`).
pub(crate) fn client_verifier(
    settings: &control_api::pb::TlsSettings,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    if settings.client_ca_pem.trim().is_empty() {
        return Ok(WebPkiClientVerifier::no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(settings.client_ca_pem.as_bytes()) {
        let c = c.map_err(|e| format!("client CA: {e}"))?;
        roots.add(c).map_err(|e| format!("client CA: {e}"))?;
    }
    if roots.is_empty() {
        return Err("client CA: no certificate in PEM".into());
    }
    let mut b = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    );
    if settings.client_cert_optional {
        b = b.allow_unauthenticated();
    }
    b.build().map_err(|e| format!("client CA: {e}"))
}

/// A server config around `resolver`: TLS 1.3 and 1.2 with aws-lc-rs's
/// default suites (AEAD only: AES-GCM and ChaCha20-Poly1305; ECDHE key
/// exchange, X25519MLKEM768 / X25519 / P-256 / P-384), ALPN h2 and
/// http/1.1, optional client-certificate verification, resumption (session
/// cache, and tickets sealed with the shared keys) kept across configs.
pub(crate) fn server_config(
    resolver: Arc<CertResolver>,
    shared: &Shared,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
) -> Result<Arc<ServerConfig>, String> {
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS config: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    // Our order (AES-128-GCM first), not the client's: see `provider`.
    cfg.ignore_client_order = true;
    cfg.session_storage = shared.session_storage.clone();
    if let Some(t) = &shared.ticketer {
        cfg.ticketer = t.clone();
    }
    Ok(Arc::new(cfg))
}

/// aws-lc-rs with AES-128-GCM suites (SHA-256) ahead of AES-256-GCM
/// (SHA-384). Both are strong AEAD suites; SHA-256 runs on the SHA
/// extensions of x86-64 and arm64 CPUs while SHA-512 (behind SHA-384) has
/// no such path on most, and a TLS 1.3 handshake's key schedule is some
/// thirty HMACs: with SHA-384 they were 16 % of a full handshake's CPU.
fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite as C;
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            C::TLS13_AES_128_GCM_SHA256
                | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(name: &str, sni: &[&str], default: bool) -> Certificate {
        let ck = rcgen::generate_simple_self_signed(
            sni.iter()
                .map(|s| s.to_string())
                .chain(std::iter::once("fallback.test".to_string()))
                .collect::<Vec<_>>(),
        )
        .expect("rcgen");
        Certificate {
            name: name.into(),
            sni_names: sni.iter().map(|s| s.to_string()).collect(),
            cert_chain_pem: ck.cert.pem(),
            private_key_pem: ck.signing_key.serialize_pem(),
            default,
            private_key_fingerprint: String::new(),
        }
    }

    fn which(r: &CertResolver, certs: &[Certificate], sni: Option<&str>) -> Option<String> {
        let got = r.lookup(sni)?;
        certs.iter().find_map(|c| {
            let ck = load_certified_key(&c.cert_chain_pem, &c.private_key_pem).ok()?;
            (ck.cert == got.cert).then(|| c.name.clone())
        })
    }

    #[test]
    fn sni_precedence() {
        let certs = vec![
            cert("first", &["first.test"], false),
            cert("wild", &["*.example.com"], false),
            cert("exact", &["www.example.com"], false),
            cert("dflt", &["dflt.test"], true),
        ];
        let r = CertResolver::compile(&certs).expect("compile");
        let w = |s| which(&r, &certs, s);
        assert_eq!(w(Some("www.example.com")).as_deref(), Some("exact"));
        assert_eq!(w(Some("WWW.example.com.")).as_deref(), Some("exact"));
        assert_eq!(w(Some("api.example.com")).as_deref(), Some("wild"));
        assert_eq!(w(Some("a.b.example.com")).as_deref(), Some("dflt"));
        assert_eq!(w(Some("example.com")).as_deref(), Some("dflt"));
        assert_eq!(w(None).as_deref(), Some("dflt"));

        // Without a default, the first certificate is.
        let certs = vec![
            cert("one", &["one.test"], false),
            cert("two", &["two.test"], false),
        ];
        let r = CertResolver::compile(&certs).expect("compile");
        assert_eq!(which(&r, &certs, Some("nope.test")).as_deref(), Some("one"));
    }

    #[test]
    fn bad_material_is_refused() {
        let good = cert("good", &["good.test"], false);
        let mut bad = good.clone();
        bad.private_key_pem = "garbage".into();
        assert!(CertResolver::compile(&[bad]).is_err());
        let mut bad = good.clone();
        bad.cert_chain_pem = String::new();
        assert!(CertResolver::compile(&[bad]).is_err());
        let mut bad = good.clone();
        bad.sni_names = vec!["a.*.test".into()];
        assert!(CertResolver::compile(&[bad]).is_err());
        let other = cert("other", &["other.test"], false);
        let mut mismatched = good;
        mismatched.private_key_pem = other.private_key_pem;
        let e = CertResolver::compile(&[mismatched]).expect_err("mismatch");
        assert!(e.contains("good"), "{e}");
    }
}
