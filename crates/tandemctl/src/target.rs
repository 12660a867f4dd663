//! Where the control service is: `--control`, else `TANDEM_CONTROL`, else
//! `.tandem/tandemctl.toml` in the current directory, else the default.

use std::path::Path;

use anyhow::{Context, Result};

pub const DEFAULT_CONTROL: &str = "http://127.0.0.1:9400";
pub const CONFIG_FILE: &str = ".tandem/tandemctl.toml";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    control: Option<String>,
}

/// `flag` already covers `--control` and `TANDEM_CONTROL` (clap reads the env).
pub fn control_url(flag: Option<String>, cwd: &Path) -> Result<String> {
    if let Some(url) = flag.filter(|u| !u.is_empty()) {
        return Ok(url);
    }
    let path = cwd.join(CONFIG_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let cfg: FileConfig =
                toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
            Ok(cfg.control.unwrap_or_else(|| DEFAULT_CONTROL.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DEFAULT_CONTROL.to_string()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
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
        std::fs::write(dir.path().join(CONFIG_FILE), "control = 3\n")?;
        assert!(control_url(None, dir.path()).is_err());
        Ok(())
    }
}
