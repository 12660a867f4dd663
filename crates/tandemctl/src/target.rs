//! Where the control service is: `--control`, else `TANDEM_CONTROL`, else
//! `.tandem/tandemctl.toml` in the current directory, else the default.
//! The token likewise: `--token-file`, else `TANDEM_TOKEN_FILE`, else
//! `token_file` in that file (relative to the file's directory), else none.
//! TLS files likewise: `--ca/--client-cert/--client-key`, else `TANDEM_CA`/`TANDEM_CERT`/
//! `TANDEM_KEY`, else `ca`/`cert`/`key` in that file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub const DEFAULT_CONTROL: &str = "http://127.0.0.1:9400";
pub const CONFIG_FILE: &str = ".tandem/tandemctl.toml";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    control: Option<String>,
    token_file: Option<PathBuf>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

fn read_config(cwd: &Path) -> Result<Option<FileConfig>> {
    let path = cwd.join(CONFIG_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The token file to use, if any. `flag` covers `--token-file` and
/// `TANDEM_TOKEN_FILE`.
pub fn token_file(flag: Option<PathBuf>, cwd: &Path) -> Result<Option<PathBuf>> {
    if let Some(p) = flag.filter(|p| !p.as_os_str().is_empty()) {
        return Ok(Some(p));
    }
    let dir = cwd.join(CONFIG_FILE);
    let base = dir.parent().unwrap_or(cwd);
    Ok(read_config(cwd)?
        .and_then(|c| c.token_file)
        .map(|p| base.join(p)))
}

/// A TLS file (`which`: "ca", "cert" or "key"): the flag (or env), else
/// the config file's entry, relative to the file's directory.
pub fn tls_file(flag: Option<PathBuf>, which: &str, cwd: &Path) -> Result<Option<PathBuf>> {
    if let Some(p) = flag.filter(|p| !p.as_os_str().is_empty()) {
        return Ok(Some(p));
    }
    let dir = cwd.join(CONFIG_FILE);
    let base = dir.parent().unwrap_or(cwd);
    Ok(read_config(cwd)?
        .and_then(|c| match which {
            "ca" => c.ca,
            "cert" => c.cert,
            _ => c.key,
        })
        .map(|p| base.join(p)))
}

/// `flag` already covers `--control` and `TANDEM_CONTROL` (clap reads the env).
pub fn control_url(flag: Option<String>, cwd: &Path) -> Result<String> {
    if let Some(url) = flag.filter(|u| !u.is_empty()) {
        return Ok(url);
    }
    Ok(read_config(cwd)?
        .and_then(|c| c.control)
        .unwrap_or_else(|| DEFAULT_CONTROL.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence() -> Result<()> {
        let dir = tempfile::tempdir()?;
        assert_eq!(control_url(None, dir.path())?, DEFAULT_CONTROL);
        std::fs::create_dir_all(dir.path().join(".tandem"))?;
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "# comment\ncontrol = \"http://127.0.0.1:9999\"\n",
        )?;
        assert_eq!(control_url(None, dir.path())?, "http://127.0.0.1:9999");
        assert_eq!(
            control_url(Some("http://x:1".into()), dir.path())?,
            "http://x:1"
        );
        assert_eq!(token_file(None, dir.path())?, None);
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "control = \"http://127.0.0.1:9999\"\ntoken_file = \"admin.token\"\n",
        )?;
        assert_eq!(
            token_file(None, dir.path())?,
            Some(dir.path().join(".tandem/admin.token"))
        );
        assert_eq!(
            token_file(Some("/t".into()), dir.path())?,
            Some(PathBuf::from("/t"))
        );
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "control = \"https://c:1\"\nca = \"ca.pem\"\ncert = \"/abs/c.pem\"\n",
        )?;
        assert_eq!(
            tls_file(None, "ca", dir.path())?,
            Some(dir.path().join(".tandem/ca.pem"))
        );
        assert_eq!(
            tls_file(None, "cert", dir.path())?,
            Some(PathBuf::from("/abs/c.pem"))
        );
        assert_eq!(tls_file(None, "key", dir.path())?, None);
        assert_eq!(
            tls_file(Some("/k".into()), "key", dir.path())?,
            Some(PathBuf::from("/k"))
        );
        std::fs::write(dir.path().join(CONFIG_FILE), "control = 3\n")?;
        assert!(control_url(None, dir.path()).is_err());
        Ok(())
    }
}
