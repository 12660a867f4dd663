//! Who may call what: two roles, admin and subscriber.
//!
//! Two kinds of credential, usable alone or together:
//!
//! - **Bearer tokens** from files, compared in constant time. A token file
//!   holds one token per line (`#` comments and blank lines skipped), either
//!   `TOKEN` alone (named after the role) or `NAME TOKEN`; the name is what
//!   the audit trail records. A token names a role, not a subscriber id.
//! - **Client certificates** (mTLS, when control has a client CA). The
//!   identity is the certificate's SAN URI: `spiffe://tandem/admin/<name>` is
//!   admin `<name>`; `spiffe://tandem/subscriber/<id>` is subscriber `<id>`,
//!   which may only watch (and so ACK and report) as `<id>`.
//!
//! Policy ([`Auth::check_request`]): with a client CA and no token files, a
//! certificate is required (the TLS handshake refuses clients without one).
//! With both, either credential is enough, unless `require_both` is set (then
//! the handshake demands a certificate and a valid token is also needed; the
//! granted role is the lesser of the two). With neither, authentication is
//! off and every caller is "anonymous" with every right.

use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

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
    /// Client certificates are verified (control has a client CA).
    certs: bool,
    /// Both a certificate and a token are needed.
    require_both: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("Auth")
            .field("enabled", &self.enabled())
            .field("client_certificates", &self.certs)
            .field("require_both", &self.require_both)
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

    /// Whether calls need a credential.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty() || self.certs
    }

    /// Whether bearer tokens are configured.
    pub fn tokens_enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Accepts verified client certificates as credentials (call when the
    /// server has a client CA). With `require_both`, a call needs a
    /// certificate and, when tokens are configured, a token as well.
    pub fn with_client_certificates(mut self, require_both: bool) -> Self {
        self.certs = true;
        self.require_both = require_both;
        self
    }

    /// Whether verified client certificates are credentials.
    pub fn accepts_client_certificates(&self) -> bool {
        self.certs
    }

    /// Whether the TLS handshake must demand a client certificate: when
    /// certificates are the only credential, or both are required.
    pub fn client_certificate_required(&self) -> bool {
        self.certs && (self.tokens.is_empty() || self.require_both)
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

    /// Checks a call's bearer token for `need` (no certificate considered).
    /// Missing or unknown token: `UNAUTHENTICATED`; a subscriber token where
    /// admin is needed: `PERMISSION_DENIED`.
    pub fn check(&self, metadata: &MetadataMap, need: Role) -> Result<Principal, Status> {
        if self.tokens.is_empty() {
            return Ok(Principal::anonymous());
        }
        let t = self.token(metadata)?.ok_or_else(|| {
            Status::unauthenticated("missing credentials: send \"authorization: Bearer TOKEN\"")
        })?;
        allow(&t.name, t.role, need)?;
        Ok(Principal {
            name: t.name.clone(),
            role: Some(t.role),
        })
    }

    /// Checks a call's credentials (token and, over mTLS, the client
    /// certificate) for `need`, by the policy in the module docs.
    pub fn check_request<T>(&self, request: &Request<T>, need: Role) -> Result<Caller, Status> {
        let certs = request.peer_certs();
        self.check_parts(
            request.metadata(),
            certs.as_deref().map(Vec::as_slice),
            need,
        )
    }

    /// [`Auth::check_request`] on the parts of a request: its metadata and
    /// the peer's verified certificate chain (leaf first), if any.
    pub fn check_parts(
        &self,
        metadata: &MetadataMap,
        peer_certs: Option<&[CertificateDer<'static>]>,
        need: Role,
    ) -> Result<Caller, Status> {
        if !self.enabled() {
            return Ok(Caller {
                principal: Principal::anonymous(),
                subscriber_id: None,
            });
        }
        let cert = match peer_certs.and_then(|c| c.first()) {
            Some(leaf) if self.certs => Some(identity_of(leaf)?),
            _ => None,
        };
        let token = if self.tokens.is_empty() {
            None
        } else {
            self.token(metadata)?
        };
        let need_cert = self.client_certificate_required();
        let need_token = !self.tokens.is_empty() && (!self.certs || self.require_both);
        if need_cert && cert.is_none() {
            return Err(Status::unauthenticated(
                "missing credentials: this control requires a client certificate",
            ));
        }
        if need_token && token.is_none() {
            return Err(Status::unauthenticated(
                "missing credentials: send \"authorization: Bearer TOKEN\"",
            ));
        }
        match (cert, token) {
            (None, None) => Err(Status::unauthenticated(
                "missing credentials: send \"authorization: Bearer TOKEN\" or a client certificate",
            )),
            (Some(c), None) => {
                allow(&c.name, c.role, need)?;
                Ok(c.caller())
            }
            (None, Some(t)) => {
                allow(&t.name, t.role, need)?;
                Ok(Caller {
                    principal: Principal {
                        name: t.name.clone(),
                        role: Some(t.role),
                    },
                    subscriber_id: None,
                })
            }
            (Some(c), Some(t)) => {
                // Both: the lesser role; the certificate names the caller.
                allow(&c.name, c.role, need)?;
                allow(&t.name, t.role, need)?;
                let mut caller = c.caller();
                if t.role == Role::Subscriber {
                    caller.principal.role = Some(Role::Subscriber);
                }
                Ok(caller)
            }
        }
    }

    /// The token presented, if any. A malformed or unknown token is
    /// `UNAUTHENTICATED`.
    fn token(&self, metadata: &MetadataMap) -> Result<Option<&Token>, Status> {
        let Some(value) = metadata.get("authorization") else {
            return Ok(None);
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
        match found {
            Some(t) => Ok(Some(t)),
            None => Err(Status::unauthenticated("invalid credentials")),
        }
    }
}

/// A checked caller: who (for the audit trail) and, for a subscriber
/// identified by its certificate, the only id it may watch as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    /// `Some(id)`: this caller may only subscribe as `id`.
    pub subscriber_id: Option<String>,
}

impl Caller {
    /// Refuses (`PERMISSION_DENIED`) a watch as `id` by a caller bound to
    /// another id.
    pub fn may_watch_as(&self, id: &str) -> Result<(), Status> {
        match &self.subscriber_id {
            Some(own) if own != id => Err(Status::permission_denied(format!(
                "subscriber {own:?} may only watch as {own:?}, not as {id:?}"
            ))),
            _ => Ok(()),
        }
    }
}

/// SAN URI prefix of a Tandem identity.
pub const SPIFFE_PREFIX: &str = "spiffe://tandem/";

/// The identity a client certificate carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertIdentity {
    pub role: Role,
    pub name: String,
}

impl CertIdentity {
    fn caller(&self) -> Caller {
        Caller {
            principal: Principal {
                name: format!("{}/{}", self.role.as_str(), self.name),
                role: Some(self.role),
            },
            subscriber_id: (self.role == Role::Subscriber).then(|| self.name.clone()),
        }
    }
}

/// Parses `spiffe://tandem/admin/<name>` or `spiffe://tandem/subscriber/<id>`.
pub fn parse_identity_uri(uri: &str) -> Option<CertIdentity> {
    let rest = uri.strip_prefix(SPIFFE_PREFIX)?;
    let (role, name) = rest.split_once('/')?;
    let role = match role {
        "admin" => Role::Admin,
        "subscriber" => Role::Subscriber,
        _ => return None,
    };
    if crate::validate::check_name(name).is_err() {
        return None;
    }
    Some(CertIdentity {
        role,
        name: name.to_string(),
    })
}

/// The Tandem identity in a (verified) client certificate: exactly one
/// `spiffe://tandem/...` SAN URI. None, several or an unparsable
/// certificate: `PERMISSION_DENIED` (the certificate is trusted but names no
/// role).
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<CertIdentity, Status> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| Status::unauthenticated("client certificate cannot be parsed"))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|_| Status::unauthenticated("client certificate has a malformed SAN"))?;
    let mut found: Vec<CertIdentity> = Vec::new();
    if let Some(san) = san {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = n
                && u.starts_with(SPIFFE_PREFIX)
            {
                match parse_identity_uri(u) {
                    Some(id) => found.push(id),
                    None => {
                        return Err(Status::permission_denied(format!(
                            "client certificate SAN URI {u:?} is not spiffe://tandem/admin/NAME or spiffe://tandem/subscriber/ID"
                        )));
                    }
                }
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Status::permission_denied(
            "client certificate names no Tandem identity (SAN URI spiffe://tandem/admin/NAME or spiffe://tandem/subscriber/ID)",
        )),
        _ => Err(Status::permission_denied(
            "client certificate names more than one Tandem identity",
        )),
    }
}

/// `PERMISSION_DENIED` when `role` may not make a call that needs `need`.
fn allow(name: &str, role: Role, need: Role) -> Result<(), Status> {
    if need == Role::Admin && role != Role::Admin {
        return Err(Status::permission_denied(format!(
            "{name:?} has the {} role; this call needs admin",
            role.as_str()
        )));
    }
    Ok(())
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

    fn cert_with_uri(uri: Option<&str>) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("keygen");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        if let Some(u) = uri {
            p.subject_alt_names
                .push(rcgen::SanType::URI(u.try_into().expect("ia5")));
        }
        p.self_signed(&key).expect("self-signed").der().clone()
    }

    #[test]
    fn identity_uris() {
        let id = |u: &str| parse_identity_uri(u).map(|i| (i.role, i.name));
        assert_eq!(
            id("spiffe://tandem/admin/alice"),
            Some((Role::Admin, "alice".into()))
        );
        assert_eq!(
            id("spiffe://tandem/subscriber/node-1"),
            Some((Role::Subscriber, "node-1".into()))
        );
        for bad in [
            "spiffe://tandem/root/x",
            "spiffe://tandem/admin/",
            "spiffe://tandem/admin/a/b",
            "spiffe://other/admin/alice",
            "spiffe://tandem/subscriber",
        ] {
            assert_eq!(id(bad), None, "{bad}");
        }
    }

    #[test]
    fn certificates_give_roles_and_bind_ids() {
        let code = |r: Result<Caller, Status>| r.err().map(|s| s.code());
        let only_certs = Auth::disabled().with_client_certificates(false);
        assert!(only_certs.client_certificate_required());
        let admin = [cert_with_uri(Some("spiffe://tandem/admin/alice"))];
        let sub = [cert_with_uri(Some("spiffe://tandem/subscriber/node-1"))];
        let none = [cert_with_uri(None)];
        let empty = MetadataMap::new();
        let c = only_certs.check_parts(&empty, Some(&admin), Role::Admin);
        assert_eq!(
            c.as_ref().ok().map(|c| c.principal.name.as_str()),
            Some("admin/alice")
        );
        assert_eq!(
            code(only_certs.check_parts(&empty, Some(&sub), Role::Admin)),
            Some(tonic::Code::PermissionDenied)
        );
        let c = only_certs.check_parts(&empty, Some(&sub), Role::Subscriber);
        let Ok(c) = c else {
            panic!("subscriber refused: {c:?}");
        };
        assert!(c.may_watch_as("node-1").is_ok());
        assert_eq!(
            c.may_watch_as("node-2").err().map(|s| s.code()),
            Some(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            code(only_certs.check_parts(&empty, Some(&none), Role::Subscriber)),
            Some(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            code(only_certs.check_parts(&empty, None, Role::Subscriber)),
            Some(tonic::Code::Unauthenticated)
        );

        // Tokens and certificates, either enough; both: the lesser role.
        let either = Auth::disabled()
            .with_token(Role::Admin, "ops", "admin-token-0123456789")
            .with_client_certificates(false);
        assert!(!either.client_certificate_required());
        assert!(
            either
                .check_parts(&md("Bearer admin-token-0123456789"), None, Role::Admin)
                .is_ok()
        );
        assert!(
            either
                .check_parts(&empty, Some(&admin), Role::Admin)
                .is_ok()
        );
        assert_eq!(
            code(either.check_parts(
                &md("Bearer admin-token-0123456789"),
                Some(&sub),
                Role::Admin
            )),
            Some(tonic::Code::PermissionDenied)
        );
        let both = Auth::disabled()
            .with_token(Role::Admin, "ops", "admin-token-0123456789")
            .with_client_certificates(true);
        assert!(both.client_certificate_required());
        assert_eq!(
            code(both.check_parts(&empty, Some(&admin), Role::Admin)),
            Some(tonic::Code::Unauthenticated)
        );
        assert!(
            both.check_parts(
                &md("Bearer admin-token-0123456789"),
                Some(&admin),
                Role::Admin
            )
            .is_ok()
        );
    }
}
