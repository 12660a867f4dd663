//! Server side of the bearer-token credentials: two roles, admin and
//! subscriber, each with tokens from a file, compared in constant time.
//!
//! A token file holds one token per line (`#` comments and blank lines
//! skipped), either `TOKEN` alone (named after the role) or `NAME TOKEN`;
//! the name is what the audit trail records. With no token file at all,
//! authentication is off and every caller is "anonymous" with every right.

use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Reads and changes the state; may also watch.
    Admin,
    /// Watches and answers (directors, nodes).
    Subscriber,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Subscriber => "subscriber",
        }
    }
}

/// Who made a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's name, or "anonymous" when authentication is off.
    pub name: String,
    /// `None` when authentication is off.
    pub role: Option<Role>,
}

impl Principal {
    pub fn anonymous() -> Self {
        Self {
            name: "anonymous".into(),
            role: None,
        }
    }

    /// "admin", "subscriber" or "anonymous".
    pub fn role_name(&self) -> &'static str {
        self.role.map_or("anonymous", Role::as_str)
    }
}

/// Why the token files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading token file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {path} holds no token")]
    Empty { path: PathBuf },
    #[error("token file {path}, line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

#[derive(Clone)]
struct Token {
    name: String,
    role: Role,
    secret: Vec<u8>,
}

/// The credentials the server accepts.
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Vec<Token>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("Auth")
            .field("enabled", &self.enabled())
            .field(
                "tokens",
                &self
                    .tokens
                    .iter()
                    .map(|t| format!("{}:{}", t.role.as_str(), t.name))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Shortest accepted token (bytes).
pub const MIN_TOKEN_LEN: usize = 16;

impl Auth {
    /// Authentication off: every call is allowed, as "anonymous".
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Whether calls need a token.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Loads the token files. Both `None`: authentication off. With only an
    /// admin file, subscribers must present an admin token.
    pub fn from_files(admin: Option<&Path>, subscriber: Option<&Path>) -> Result<Self, AuthError> {
        let mut auth = Self::default();
        if let Some(p) = admin {
            auth.tokens.extend(read_file(p, Role::Admin)?);
        }
        if let Some(p) = subscriber {
            auth.tokens.extend(read_file(p, Role::Subscriber)?);
        }
        Ok(auth)
    }

    /// Adds a token directly (tests, embedding).
    pub fn with_token(mut self, role: Role, name: &str, token: &str) -> Self {
        self.tokens.push(Token {
            name: name.into(),
            role,
            secret: token.as_bytes().to_vec(),
        });
        self
    }

    /// Checks a call's credentials for `need`. Missing or unknown token:
    /// `UNAUTHENTICATED`; a subscriber token where admin is needed:
    /// `PERMISSION_DENIED`.
    pub fn check(&self, metadata: &MetadataMap, need: Role) -> Result<Principal, Status> {
        if !self.enabled() {
            return Ok(Principal::anonymous());
        }
        let Some(value) = metadata.get("authorization") else {
            return Err(Status::unauthenticated(
                "missing credentials: send \"authorization: Bearer TOKEN\"",
            ));
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .ok_or_else(|| Status::unauthenticated("authorization is not \"Bearer TOKEN\""))?;
        // Compare against every token, without stopping at a match, so the
        // time taken does not tell which one (or how much of one) matched.
        let mut found: Option<&Token> = None;
        for t in &self.tokens {
            if bool::from(t.secret.as_slice().ct_eq(presented.as_bytes())) && found.is_none() {
                found = Some(t);
            }
        }
        let Some(t) = found else {
            return Err(Status::unauthenticated("invalid credentials"));
        };
        if need == Role::Admin && t.role != Role::Admin {
            return Err(Status::permission_denied(format!(
                "{:?} has the {} role; this call needs admin",
                t.name,
                t.role.as_str()
            )));
        }
        Ok(Principal {
            name: t.name.clone(),
            role: Some(t.role),
        })
    }
}

fn read_file(path: &Path, role: Role) -> Result<Vec<Token>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let (name, secret) = match words.as_slice() {
            [t] => (role.as_str().to_string(), *t),
            [n, t] => (n.to_string(), *t),
            _ => {
                return Err(AuthError::Line {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: "expected TOKEN or NAME TOKEN".into(),
                });
            }
        };
        if secret.len() < MIN_TOKEN_LEN {
            return Err(AuthError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                message: format!("token shorter than {MIN_TOKEN_LEN} characters"),
            });
        }
        out.push(Token {
            name,
            role,
            secret: secret.as_bytes().to_vec(),
        });
    }
    if out.is_empty() {
        return Err(AuthError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(v: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Ok(v) = v.parse() {
            m.insert("authorization", v);
        }
        m
    }

    #[test]
    fn roles_and_refusals() {
        let auth = Auth::disabled()
            .with_token(Role::Admin, "alice", "admin-token-0123456789")
            .with_token(Role::Subscriber, "nodes", "sub-token-0123456789");
        let ok = auth.check(&md("Bearer admin-token-0123456789"), Role::Admin);
        assert_eq!(ok.ok().map(|p| p.name), Some("alice".to_string()));
        assert!(
            auth.check(&md("bearer admin-token-0123456789"), Role::Subscriber)
                .is_ok()
        );
        assert!(
            auth.check(&md("Bearer sub-token-0123456789"), Role::Subscriber)
                .is_ok()
        );
        let code = |r: Result<Principal, Status>| r.err().map(|s| s.code());
        assert_eq!(
            code(auth.check(&md("Bearer sub-token-0123456789"), Role::Admin)),
            Some(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            code(auth.check(&MetadataMap::new(), Role::Subscriber)),
            Some(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(auth.check(&md("Bearer admin-token-012345678"), Role::Admin)),
            Some(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(auth.check(&md("Basic admin-token-0123456789"), Role::Admin)),
            Some(tonic::Code::Unauthenticated)
        );
        let off = Auth::disabled().check(&MetadataMap::new(), Role::Admin);
        assert_eq!(off.ok(), Some(Principal::anonymous()));
    }

    #[test]
    fn token_files() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let a = dir.path().join("admin");
        std::fs::write(
            &a,
            "# admins\nalice aaaaaaaaaaaaaaaaaaaa\nbbbbbbbbbbbbbbbbbbbb\n",
        )?;
        let auth = Auth::from_files(Some(&a), None)?;
        let p = auth.check(&md("Bearer bbbbbbbbbbbbbbbbbbbb"), Role::Admin)?;
        assert_eq!(p.name, "admin");
        std::fs::write(&a, "short\n")?;
        assert!(matches!(
            Auth::from_files(Some(&a), None),
            Err(AuthError::Line { .. })
        ));
        std::fs::write(&a, "\n# none\n")?;
        assert!(matches!(
            Auth::from_files(Some(&a), None),
            Err(AuthError::Empty { .. })
        ));
        Ok(())
    }
}
