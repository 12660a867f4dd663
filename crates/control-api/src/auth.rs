//! Client side of the bearer-token credentials: reading a token file and
//! attaching the token to requests.

use std::path::{Path, PathBuf};

/// Why a token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading token file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {path} holds no token")]
    Empty { path: PathBuf },
    #[error("token is not a valid header value (printable ASCII only)")]
    Invalid,
}

/// Reads the token a client presents from `path`: the first line that is
/// neither empty nor a `#` comment, and of it the last whitespace-separated
/// word. So the same file works for a client and for the server, whose
/// token files may name each token (`NAME TOKEN` per line).
pub fn read_token_file(path: &Path) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|l| l.split_whitespace().last().map(str::to_string))
        .ok_or_else(|| TokenError::Empty {
            path: path.to_path_buf(),
        })
}

/// The `authorization` header value for `token`.
pub fn bearer(
    token: &str,
) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, TokenError> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| TokenError::Invalid)
}

/// A tonic interceptor that adds `authorization: Bearer TOKEN` to every
/// request (no header when there is no token).
#[derive(Clone, Debug, Default)]
pub struct BearerInterceptor {
    header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl BearerInterceptor {
    /// No token: requests go out without credentials.
    pub fn none() -> Self {
        Self::default()
    }

    /// Sends `token` with every request.
    pub fn new(token: &str) -> Result<Self, TokenError> {
        Ok(Self {
            header: Some(bearer(token)?),
        })
    }

    /// Sends `token`, if any, with every request.
    pub fn optional(token: Option<&str>) -> Result<Self, TokenError> {
        match token {
            Some(t) => Self::new(t),
            None => Ok(Self::none()),
        }
    }
}

impl tonic::service::Interceptor for BearerInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_forms() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("t");
        std::fs::write(&p, "s3cret\n")?;
        assert_eq!(read_token_file(&p)?, "s3cret");
        std::fs::write(&p, "# admins\n\n  alice   tok-a \nbob tok-b\n")?;
        assert_eq!(read_token_file(&p)?, "tok-a");
        std::fs::write(&p, "# nothing\n\n")?;
        assert!(matches!(read_token_file(&p), Err(TokenError::Empty { .. })));
        assert!(matches!(
            read_token_file(&dir.path().join("missing")),
            Err(TokenError::Read { .. })
        ));
        assert!(bearer("bad\ntoken").is_err());
        Ok(())
    }
}
