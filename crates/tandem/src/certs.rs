//! The local CA and server certificate `tandem up` serves with.
//!
//! Made on first run into the data directory and reused afterwards, so a
//! client that trusts `ca.pem` keeps trusting a restarted system.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

/// Paths of the CA and the server certificate in a data directory.
pub struct LocalPki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl LocalPki {
    pub fn in_dir(dir: &Path) -> LocalPki {
        LocalPki {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
        }
    }

    /// Creates the CA and a server certificate for `localhost` and
    /// 127.0.0.1 unless they exist already. Returns true if it made them.
    pub fn ensure(&self) -> Result<bool> {
        if self.ca_cert.exists() && self.server_cert.exists() && self.server_key.exists() {
            return Ok(false);
        }
        let ca_key = KeyPair::generate().context("generating CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Tandem local CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).context("self-signing the CA")?;

        let key = KeyPair::generate().context("generating server key")?;
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params
            .signed_by(&key, &ca)
            .context("signing the server certificate")?;

        // Chain: leaf then CA, as servers send it.
        let chain = format!("{}{}", cert.pem(), ca.pem());
        write_private(&self.server_key, key.serialize_pem().as_bytes())?;
        std::fs::write(&self.server_cert, chain)
            .with_context(|| format!("writing {}", self.server_cert.display()))?;
        std::fs::write(&self.ca_cert, ca.pem())
            .with_context(|| format!("writing {}", self.ca_cert.display()))?;
        Ok(true)
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}
