//! Shared by tandemctl's integration tests: an in-process control service on
//! 127.0.0.1:0 and a way to run the built `tandemctl` against it.
#![allow(dead_code)] // each test file uses a different part

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub struct Control {
    pub url: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), control::ControlError>>,
}

impl Control {
    /// Control with authentication off.
    pub async fn start(data_dir: &Path) -> Result<Control, Box<dyn std::error::Error>> {
        Self::start_with(data_dir, control::ServeOptions::default()).await
    }

    pub async fn start_with(
        data_dir: &Path,
        options: control::ServeOptions,
    ) -> Result<Control, Box<dyn std::error::Error>> {
        let state = control::State::open(data_dir)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(control::serve_with(
            listener,
            state,
            options,
            shutdown.clone(),
        ));
        Ok(Control {
            url,
            shutdown,
            task,
        })
    }

    pub async fn stop(self) -> TestResult {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await???;
        Ok(())
    }
}

/// Runs tandemctl in `cwd` (so no stray config file is found) with `args`.
pub async fn ctl(cwd: &Path, args: &[&str]) -> Result<Output, Box<dyn std::error::Error>> {
    ctl_env(cwd, &[], args).await
}

/// Like [`ctl`], with extra environment variables.
pub async fn ctl_env(
    cwd: &Path,
    envs: &[(&str, &str)],
    args: &[&str],
) -> Result<Output, Box<dyn std::error::Error>> {
    Ok(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tandemctl"))
            .args(args)
            .current_dir(cwd)
            .env_remove("TANDEM_CONTROL")
            .env_remove("TANDEM_TOKEN_FILE")
            .env_remove("TANDEM_CA")
            .env_remove("TANDEM_CERT")
            .env_remove("TANDEM_KEY")
            .envs(envs.iter().copied())
            .output()
            .await?,
    )
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs tandemctl, asserts it succeeded, returns its stdout.
pub async fn ok(cwd: &Path, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let out = ctl(cwd, args).await?;
    assert!(
        out.status.success(),
        "tandemctl {args:?}: {}",
        text(&out.stderr)
    );
    Ok(text(&out.stdout))
}

/// Runs tandemctl, asserts it failed with exit status 1, returns its stderr.
pub async fn fails(cwd: &Path, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let out = ctl(cwd, args).await?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "tandemctl {args:?} should fail: {}",
        text(&out.stdout)
    );
    Ok(text(&out.stderr))
}

impl Control {
    /// Control over TLS with a client CA (mTLS; no tokens): a certificate
    /// is the only credential. The URL is `https://127.0.0.1:PORT`.
    pub async fn start_mtls(
        data_dir: &Path,
        pki: &Pki,
    ) -> Result<Control, Box<dyn std::error::Error>> {
        let (cert_pem, key_pem) = pki.server()?;
        let options = control::ServeOptions {
            tls: Some(control::ServerTls {
                cert_pem,
                key_pem,
                client_ca_pem: Some(pki.ca_pem()),
            }),
            ..control::ServeOptions::default()
        };
        let mut c = Self::start_with(data_dir, options).await?;
        c.url = c.url.replacen("http://", "https://", 1);
        Ok(c)
    }
}

/// A throwaway CA for the control port and its clients.
pub struct Pki {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new() -> Result<Pki, Box<dyn std::error::Error>> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "tandemctl test CA");
        Ok(Pki {
            issuer: rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate()?)?,
        })
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        self.issuer.pem().into_bytes()
    }

    /// Server certificate for 127.0.0.1: (chain, key) PEM.
    pub fn server(&self) -> Result<(Vec<u8>, Vec<u8>), Box<dyn std::error::Error>> {
        let key = rcgen::KeyPair::generate()?;
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
        p.subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok((cert.pem().into_bytes(), key.serialize_pem().into_bytes()))
    }

    /// Writes a client certificate with SAN URI `uri` to `dir/NAME.pem` and
    /// `dir/NAME.key`; returns their paths.
    pub fn client_files(
        &self,
        dir: &Path,
        name: &str,
        uri: &str,
    ) -> Result<(std::path::PathBuf, std::path::PathBuf), Box<dyn std::error::Error>> {
        let key = rcgen::KeyPair::generate()?;
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into()?));
        let cert = p.signed_by(&key, &self.issuer)?;
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem())?;
        std::fs::write(&k, key.serialize_pem())?;
        Ok((c, k))
    }
}
