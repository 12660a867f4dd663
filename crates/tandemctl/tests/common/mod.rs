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
            .envs(envs.iter().copied())
            .output()
            .await?,
    )
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
