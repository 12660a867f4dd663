//! A throwaway CA and a `localhost` server certificate for tests that load
//! their own config into control (no `tandem up`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

pub struct TestPki {
    /// The CA certificate (PEM file) a client trusts.
    pub ca_pem: PathBuf,
    /// Leaf then CA, PEM.
    pub chain_pem: String,
    pub key_pem: String,
}

/// Makes a CA and a server certificate for `localhost` (plus the given IP
/// addresses) and writes the CA to `dir/ca.pem`.
pub fn make(dir: &Path, ips: &[std::net::IpAddr]) -> Result<TestPki> {
    let ca_key = KeyPair::generate().context("CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Tandem test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).context("self-signing the CA")?;
    let key = KeyPair::generate().context("server key")?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    for ip in ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca).context("signing")?;
    let ca_pem = dir.join("ca.pem");
    std::fs::write(&ca_pem, ca.pem()).context("writing ca.pem")?;
    Ok(TestPki {
        ca_pem,
        chain_pem: format!("{}{}", cert.pem(), ca.pem()),
        key_pem: key.serialize_pem(),
    })
}
