//! Client side of the control port's TLS: the CA to trust and, for mTLS, the
//! client certificate and key. An `https://` endpoint uses TLS (and needs a
//! CA); an `http://` one is plain and refuses client TLS settings, so a
//! certificate is never silently unused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Why a channel to control could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a client certificate needs its key, and a key its certificate")]
    HalfIdentity,
    #[error("{endpoint} is https:// but no CA to trust was given (--ca / --control-ca)")]
    NoCa { endpoint: String },
    #[error(
        "TLS settings (CA or client certificate) given for plain-text endpoint {endpoint}: use https://"
    )]
    PlainWithTls { endpoint: String },
    #[error("control endpoint {endpoint:?}: {message}")]
    Endpoint { endpoint: String, message: String },
}

/// The client's TLS material, in PEM.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// CA certificate(s) that signed control's server certificate.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and key (mTLS identity).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Name to check the server certificate against, when not the host of
    /// the endpoint URL.
    pub domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClientTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl ClientTls {
    /// Reads the PEM files. `None` everywhere gives `None`.
    pub fn from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Option<Self>, ClientTlsError> {
        let read = |what: &'static str, p: &Path| {
            std::fs::read(p).map_err(|source| ClientTlsError::Read {
                what,
                path: p.to_path_buf(),
                source,
            })
        };
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read("client certificate", c)?, read("client key", k)?)),
            (None, None) => None,
            _ => return Err(ClientTlsError::HalfIdentity),
        };
        let ca_pem = ca.map(|p| read("CA certificate", p)).transpose()?;
        if ca_pem.is_none() && identity.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            ca_pem,
            identity,
            domain: None,
        }))
    }
}

/// An [`Endpoint`] for `url` with TLS when it is `https://`.
pub fn endpoint(url: &str, tls: Option<&ClientTls>) -> Result<Endpoint, ClientTlsError> {
    let bad = |message: String| ClientTlsError::Endpoint {
        endpoint: url.to_string(),
        message,
    };
    let ep = Endpoint::from_shared(url.to_string())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(5));
    let https = url
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    if !https {
        if tls.is_some() {
            return Err(ClientTlsError::PlainWithTls {
                endpoint: url.to_string(),
            });
        }
        return Ok(ep);
    }
    let Some(ca) = tls.and_then(|t| t.ca_pem.as_ref()) else {
        return Err(ClientTlsError::NoCa {
            endpoint: url.to_string(),
        });
    };
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(t) = tls {
        if let Some((cert, key)) = &t.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &t.domain {
            config = config.domain_name(d.clone());
        }
    }
    ep.tls_config(config).map_err(|e| bad(error_chain(&e)))
}

/// An error and its sources, joined (tonic wraps the useful part).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if parts.last() != Some(&m) {
            parts.push(m);
        }
        cur = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_and_material_must_agree() -> Result<(), Box<dyn std::error::Error>> {
        assert!(endpoint("http://127.0.0.1:9400", None).is_ok());
        let tls = ClientTls {
            ca_pem: Some(b"not a pem".to_vec()),
            ..ClientTls::default()
        };
        assert!(matches!(
            endpoint("http://127.0.0.1:9400", Some(&tls)),
            Err(ClientTlsError::PlainWithTls { .. })
        ));
        assert!(matches!(
            endpoint("https://127.0.0.1:9400", None),
            Err(ClientTlsError::NoCa { .. })
        ));
        let dir = tempfile::tempdir()?;
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "x")?;
        assert!(matches!(
            ClientTls::from_files(None, Some(&cert), None),
            Err(ClientTlsError::HalfIdentity)
        ));
        assert!(ClientTls::from_files(None, None, None)?.is_none());
        assert!(matches!(
            ClientTls::from_files(Some(&dir.path().join("missing")), None, None),
            Err(ClientTlsError::Read { .. })
        ));
        Ok(())
    }
}
