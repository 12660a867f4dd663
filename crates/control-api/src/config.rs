//! The declarative config format: the desired state as a TOML document.
//!
//! The same format serves `tandemctl apply -f`, `tandemctl state
//! export|import` and the static configs that run a director or a node
//! without a control service ([`load_file`]). Field names are the proto's;
//! enums are written by name (`state = "DRAINING"`, `lb_policy =
//! "round_robin"`, any case, with or without the proto prefix; numbers are
//! accepted too). Certificates hold their PEM inline (`cert_chain_pem`,
//! `private_key_pem`) or name files (`cert_file`, `key_file`) resolved
//! relative to the document.
//!
//! ```toml
//! [[services]]
//! name = "web"
//! address = "127.0.0.1:8443"
//! node_pool = "default"
//!
//! [[nodes]]
//! id = "node-1"
//! address = "127.0.0.1:9410"
//! weight = 100
//! state = "ACTIVE"
//!
//! [[clusters]]
//! name = "app"
//! lb_policy = "round_robin"
//! endpoints = [{ address = "127.0.0.1:8080", weight = 1 }]
//!
//! [[routes]]
//! name = "all"
//! cluster = "app"
//!
//! [[certificates]]
//! name = "localhost"
//! sni_names = ["localhost"]
//! cert_file = "certs/localhost.pem"
//! key_file = "certs/localhost.key"
//! default = true
//! ```
//!
//! Conversions: [`Document::from_snapshot`] (keys replaced by a fingerprint
//! unless [`Keys::Include`]), [`Document::into_snapshot`], and [`diff`]
//! between two snapshots as one batch of changes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pb::{self, Change, ResourceKind, Snapshot, change};

/// Why a document could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("writing TOML: {0}")]
    Serialize(#[from] toml::ser::Error),
    #[error("{path}: unknown field(s) {fields}")]
    UnknownFields { path: String, fields: String },
    #[error("certificates[{name:?}]: {message}")]
    Certificate { name: String, message: String },
}

/// What [`Document::from_snapshot`] does with private keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    /// Drop them; write `private_key_fingerprint` instead.
    Fingerprint,
    /// Keep them inline (a full backup).
    Include,
}

/// A whole desired state as written in a file.
///
/// Every field of [`Snapshot`] is accepted at the top level (so fields added
/// to the resources appear here without a change); `certificates` are
/// [`CertificateConfig`]s, which may name files.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Document {
    #[serde(flatten)]
    pub state: Snapshot,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateConfig>,
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    unknown: BTreeMap<String, toml::Value>,
}

/// A certificate in a document: the resource, plus optional file paths for
/// its chain and key, and the fingerprint of a key that is not included.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CertificateConfig {
    #[serde(flatten)]
    pub certificate: pb::Certificate,
    /// PEM chain file, relative to the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key file, relative to the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// `sha256:HEX` of the key. Written instead of the key; when read
    /// together with a key, they must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_fingerprint: Option<String>,
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    unknown: BTreeMap<String, toml::Value>,
}

/// `sha256:` and the hex SHA-256 of a PEM private key (surrounding
/// whitespace ignored). Identifies a key without revealing it.
pub fn key_fingerprint(private_key_pem: &str) -> String {
    let d = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        private_key_pem.trim().as_bytes(),
    );
    let mut s = String::from("sha256:");
    for b in d.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl Document {
    /// The document of a snapshot. Lossless except for keys under
    /// [`Keys::Fingerprint`].
    pub fn from_snapshot(snapshot: &Snapshot, keys: Keys) -> Document {
        let mut state = snapshot.clone();
        if keys == Keys::Fingerprint
            && let Some(tls) = &mut state.tls
        {
            for k in &mut tls.ticket_keys {
                k.secret.clear();
            }
        }
        let certificates = std::mem::take(&mut state.certificates)
            .into_iter()
            .map(|mut certificate| {
                let mut private_key_fingerprint = None;
                if keys == Keys::Fingerprint && !certificate.private_key_pem.is_empty() {
                    private_key_fingerprint = Some(key_fingerprint(&certificate.private_key_pem));
                    certificate.private_key_pem.clear();
                }
                CertificateConfig {
                    certificate,
                    private_key_fingerprint,
                    ..Default::default()
                }
            })
            .collect();
        Document {
            state,
            certificates,
            unknown: BTreeMap::new(),
        }
    }

    /// Parses a TOML document; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Document, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            source: Box::new(e),
        })
    }

    /// The document as TOML.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string(self)?)
    }

    /// The snapshot the document describes, with `cert_file` and `key_file`
    /// read relative to `base_dir`. A certificate without a key keeps an
    /// empty `private_key_pem` (an Apply then keeps the key control has).
    pub fn into_snapshot(self, base_dir: &Path) -> Result<Snapshot, ConfigError> {
        if !self.unknown.is_empty() {
            return Err(unknown("document", &self.unknown));
        }
        let mut state = self.state;
        for c in self.certificates {
            let name = c.certificate.name.clone();
            let err = |message: String| ConfigError::Certificate {
                name: name.clone(),
                message,
            };
            if !c.unknown.is_empty() {
                return Err(unknown(&format!("certificates[{name:?}]"), &c.unknown));
            }
            let mut cert = c.certificate;
            if let Some(f) = &c.cert_file {
                if !cert.cert_chain_pem.is_empty() {
                    return Err(err("give cert_chain_pem or cert_file, not both".into()));
                }
                cert.cert_chain_pem = read_relative(base_dir, f)?;
            }
            if let Some(f) = &c.key_file {
                if !cert.private_key_pem.is_empty() {
                    return Err(err("give private_key_pem or key_file, not both".into()));
                }
                cert.private_key_pem = read_relative(base_dir, f)?;
            }
            if let Some(want) = &c.private_key_fingerprint
                && !cert.private_key_pem.is_empty()
            {
                let got = key_fingerprint(&cert.private_key_pem);
                if &got != want {
                    return Err(err(format!(
                        "the key's fingerprint is {got}, not private_key_fingerprint {want}"
                    )));
                }
            }
            state.certificates.push(cert);
        }
        Ok(state)
    }
}

fn unknown(path: &str, fields: &BTreeMap<String, toml::Value>) -> ConfigError {
    ConfigError::UnknownFields {
        path: path.to_string(),
        fields: fields
            .keys()
            .map(|k| format!("{k:?}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn read_relative(base_dir: &Path, file: &Path) -> Result<String, ConfigError> {
    let path = base_dir.join(file);
    std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path, source })
}

/// Reads a TOML document into a snapshot (files resolved relative to it).
/// This is how a director or node loads a static config.
pub fn load_file(path: &Path) -> Result<Snapshot, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let doc = Document::from_toml(&text, &path.display().to_string())?;
    let base = path.parent().unwrap_or(Path::new("."));
    doc.into_snapshot(base)
}

/// Parses a snapshot from TOML text, files resolved relative to `base_dir`.
pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<Snapshot, ConfigError> {
    Document::from_toml(text, "document")?.into_snapshot(base_dir)
}

/// A snapshot as TOML.
pub fn to_toml_string(snapshot: &Snapshot, keys: Keys) -> Result<String, ConfigError> {
    Document::from_snapshot(snapshot, keys).to_toml()
}

/// What a diff does to one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Add,
    Change,
    Remove,
}

/// One resource in a diff, and for a change, the fields that differ
/// (`weight: 100 -> 50`; keys and chains only as "changed").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffEntry {
    pub op: Op,
    pub kind: &'static str,
    pub name: String,
    pub fields: Vec<String>,
}

impl fmt::Display for DiffEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = match self.op {
            Op::Add => '+',
            Op::Change => '~',
            Op::Remove => '-',
        };
        write!(f, "{sign} {} {}", self.kind, self.name)?;
        if !self.fields.is_empty() {
            write!(f, ": {}", self.fields.join(", "))?;
        }
        Ok(())
    }
}

/// The changes that turn `current` into `desired`, as one batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diff {
    pub changes: Vec<Change>,
    pub entries: Vec<DiffEntry>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

trait Resource: Clone + PartialEq + Serialize {
    const KIND: &'static str;
    const RESOURCE: ResourceKind;
    fn name(&self) -> &str;
    fn put(self) -> change::Change;
    /// Makes `self` comparable to `current` (e.g. an absent key means "keep").
    fn normalize(&mut self, _current: &Self) {}
}

impl Resource for pb::Service {
    const KIND: &'static str = "service";
    const RESOURCE: ResourceKind = ResourceKind::Service;
    fn name(&self) -> &str {
        &self.name
    }
    fn put(self) -> change::Change {
        change::Change::PutService(self)
    }
}

impl Resource for pb::Node {
    const KIND: &'static str = "node";
    const RESOURCE: ResourceKind = ResourceKind::Node;
    fn name(&self) -> &str {
        &self.id
    }
    fn put(self) -> change::Change {
        change::Change::PutNode(self)
    }
}

impl Resource for pb::Cluster {
    const KIND: &'static str = "cluster";
    const RESOURCE: ResourceKind = ResourceKind::Cluster;
    fn name(&self) -> &str {
        &self.name
    }
    fn put(self) -> change::Change {
        change::Change::PutCluster(self)
    }
}

impl Resource for pb::Route {
    const KIND: &'static str = "route";
    const RESOURCE: ResourceKind = ResourceKind::Route;
    fn name(&self) -> &str {
        &self.name
    }
    fn put(self) -> change::Change {
        change::Change::PutRoute(self)
    }
}

impl Resource for pb::Certificate {
    const KIND: &'static str = "certificate";
    const RESOURCE: ResourceKind = ResourceKind::Certificate;
    fn name(&self) -> &str {
        &self.name
    }
    fn put(self) -> change::Change {
        change::Change::PutCertificate(self)
    }
    fn normalize(&mut self, current: &Self) {
        if self.private_key_pem.is_empty() {
            // No key in the document: keep the current one.
            self.private_key_pem = current.private_key_pem.clone();
            self.private_key_fingerprint = current.private_key_fingerprint.clone();
        } else if current.private_key_pem.is_empty() && !current.private_key_fingerprint.is_empty()
        {
            // The current state was read without keys (the Admin API never
            // returns them): compare the keys by fingerprint.
            let fingerprint = key_fingerprint(&self.private_key_pem);
            if fingerprint == current.private_key_fingerprint {
                self.private_key_pem.clear();
            }
            self.private_key_fingerprint = fingerprint;
        } else {
            // The fingerprint is output only.
            self.private_key_fingerprint = current.private_key_fingerprint.clone();
        }
    }
}

/// Fields whose values are not shown in a diff.
const OPAQUE: &[&str] = &["private_key_pem", "cert_chain_pem"];

fn field_changes<T: Serialize>(old: &T, new: &T) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return vec!["changed".into()];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let null = serde_json::Value::Null;
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (a.get(k).unwrap_or(&null), b.get(k).unwrap_or(&null));
            if x == y {
                None
            } else if OPAQUE.contains(&k.as_str()) {
                Some(format!("{k} changed"))
            } else {
                Some(format!("{k}: {x} -> {y}"))
            }
        })
        .collect()
}

fn diff_list<T: Resource>(current: &[T], desired: &[T], prune: bool, out: &mut Diff) {
    for d in desired {
        match current.iter().find(|c| c.name() == d.name()) {
            None => {
                out.entries.push(DiffEntry {
                    op: Op::Add,
                    kind: T::KIND,
                    name: d.name().to_string(),
                    fields: Vec::new(),
                });
                out.changes.push(Change {
                    change: Some(d.clone().put()),
                });
            }
            Some(c) => {
                let mut cmp = d.clone();
                cmp.normalize(c);
                if &cmp != c {
                    out.entries.push(DiffEntry {
                        op: Op::Change,
                        kind: T::KIND,
                        name: d.name().to_string(),
                        fields: field_changes(c, &cmp),
                    });
                    out.changes.push(Change {
                        change: Some(d.clone().put()),
                    });
                }
            }
        }
    }
    if prune {
        for c in current {
            if !desired.iter().any(|d| d.name() == c.name()) {
                out.entries.push(DiffEntry {
                    op: Op::Remove,
                    kind: T::KIND,
                    name: c.name().to_string(),
                    fields: Vec::new(),
                });
                out.changes.push(Change {
                    change: Some(change::Change::Delete(pb::Delete {
                        kind: T::RESOURCE as i32,
                        name: c.name().to_string(),
                    })),
                });
            }
        }
    }
}

// `clone` stays: settings messages may stop being `Copy` as fields are added.
#[allow(clippy::clone_on_copy)]
/// The batch that makes `current` look like `desired`: puts for resources
/// added or changed, and with `prune`, deletes for resources `desired`
/// does not name. A certificate in `desired` without a key matches the
/// current one's key (the put keeps it). Versions are ignored.
pub fn diff(current: &Snapshot, desired: &Snapshot, prune: bool) -> Diff {
    let mut out = Diff::default();
    // Removals first in the listing reads better; the batch is atomic anyway.
    diff_list(&current.services, &desired.services, prune, &mut out);
    diff_list(&current.nodes, &desired.nodes, prune, &mut out);
    diff_list(&current.clusters, &desired.clusters, prune, &mut out);
    diff_list(&current.routes, &desired.routes, prune, &mut out);
    diff_list(
        &current.certificates,
        &desired.certificates,
        prune,
        &mut out,
    );
    // Settings: a document that leaves them out leaves them alone.
    if let Some(want) = &desired.tls {
        let mut cmp = want.clone();
        for k in cmp.ticket_keys.iter_mut().filter(|k| k.secret.is_empty()) {
            if let Some(old) = current
                .tls
                .as_ref()
                .and_then(|t| t.ticket_keys.iter().find(|o| o.name == k.name))
            {
                k.secret = old.secret.clone();
            }
        }
        if current.tls.as_ref() != Some(&cmp) {
            let old = current.tls.clone().unwrap_or_default();
            let mut fields = field_changes(&old, &cmp);
            for f in &mut fields {
                if f.starts_with("ticket_keys") {
                    *f = "ticket_keys changed".into();
                }
            }
            out.entries.push(DiffEntry {
                op: Op::Change,
                kind: "settings",
                name: "tls".into(),
                fields,
            });
            out.changes.push(Change {
                change: Some(change::Change::SetTls(want.clone())),
            });
        }
    }
    if let Some(want) = &desired.listener
        && current.listener.as_ref() != Some(want)
    {
        let old = current.listener.clone().unwrap_or_default();
        out.entries.push(DiffEntry {
            op: Op::Change,
            kind: "settings",
            name: "listener".into(),
            fields: field_changes(&old, want),
        });
        out.changes.push(Change {
            change: Some(change::Change::SetListener(want.clone())),
        });
    }
    out
}

/// Serde of bytes fields as lower-case hex strings.
pub mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(v.len() * 2);
        for b in v {
            out.push_str(&format!("{b:02x}"));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        let s = s.trim();
        if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(serde::de::Error::custom(
                "expected an even number of hex digits",
            ));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// Serde of enum-typed fields by name. Written as the variant's name without
/// the proto prefix (node states upper case, others lower case); read in any
/// case, with or without the prefix, or as a number.
pub mod enums {
    macro_rules! enum_field {
        ($module:ident, $ty:ty, $prefix:literal, $upper:literal) => {
            pub mod $module {
                use serde::{Deserialize, Deserializer, Serializer};

                pub fn serialize<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
                    match <$ty>::try_from(*v) {
                        Ok(e) => {
                            let n = e.as_str_name();
                            let n = n.strip_prefix($prefix).unwrap_or(n);
                            if $upper {
                                s.serialize_str(n)
                            } else {
                                s.serialize_str(&n.to_ascii_lowercase())
                            }
                        }
                        Err(_) => s.serialize_i32(*v),
                    }
                }

                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    Num(i64),
                    Name(String),
                }

                pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
                    match Raw::deserialize(d)? {
                        Raw::Num(n) => i32::try_from(n)
                            .map_err(|_| serde::de::Error::custom(format!("{n} is out of range"))),
                        Raw::Name(name) => {
                            let upper = name.trim().to_ascii_uppercase().replace('-', "_");
                            let full = if upper.starts_with($prefix) {
                                upper
                            } else {
                                format!("{}{upper}", $prefix)
                            };
                            <$ty>::from_str_name(&full)
                                .map(|e| e as i32)
                                .ok_or_else(|| {
                                    let known: Vec<String> = (0..64)
                                        .filter_map(|i| <$ty>::try_from(i).ok())
                                        .map(|e| {
                                            let n = e.as_str_name();
                                            n.strip_prefix($prefix)
                                                .unwrap_or(n)
                                                .to_ascii_lowercase()
                                        })
                                        .collect();
                                    serde::de::Error::custom(format!(
                                        "unknown value {name:?}; expected one of {}",
                                        known.join(", ")
                                    ))
                                })
                        }
                    }
                }
            }
        };
    }

    enum_field!(hash_fields, crate::pb::HashFields, "HASH_FIELDS_", false);
    enum_field!(node_state, crate::pb::NodeState, "NODE_STATE_", true);
    enum_field!(lb_policy, crate::pb::LbPolicy, "LB_POLICY_", false);
    enum_field!(
        upstream_protocol,
        crate::pb::UpstreamProtocol,
        "UPSTREAM_PROTOCOL_",
        false
    );
    enum_field!(hash_on, crate::pb::HashOn, "HASH_ON_", false);
    enum_field!(
        xdp_forwarding,
        crate::pb::XdpForwarding,
        "XDP_FORWARDING_",
        false
    );
    enum_field!(
        upstream_proxy_protocol,
        crate::pb::UpstreamProxyProtocol,
        "UPSTREAM_PROXY_PROTOCOL_",
        false
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{
        Certificate, Cluster, Endpoint, LbPolicy, Node, NodeState, Route, Service, TicketKey,
        TlsSettings,
    };

    fn sample() -> Snapshot {
        Snapshot {
            version: 7,
            services: vec![Service {
                name: "web".into(),
                address: "127.0.0.1:8443".into(),
                table_size: 65_537,
                hash: pb::HashFields::SourceIp as i32,
                node_pool: "default".into(),
                xdp_forwarding: pb::XdpForwarding::Ipip as i32,
            }],
            nodes: vec![Node {
                id: "node-1".into(),
                address: "127.0.0.1:9410".into(),
                admin_address: "127.0.0.1:9430".into(),
                weight: 100,
                state: NodeState::Draining as i32,
                pool: "default".into(),
                mac: "02:00:00:00:00:01".into(),
                tunnel_address: String::new(),
            }],
            clusters: vec![Cluster {
                name: "app".into(),
                endpoints: vec![Endpoint {
                    address: "127.0.0.1:8080".into(),
                    weight: 2,
                }],
                lb_policy: LbPolicy::LeastRequest as i32,
                connect_timeout_ms: 500,
                ..Default::default()
            }],
            routes: vec![Route {
                name: "all".into(),
                host: "example.com".into(),
                path_prefix: "/api".into(),
                cluster: "app".into(),
                methods: vec!["GET".into()],
                ..Default::default()
            }],
            certificates: vec![Certificate {
                name: "localhost".into(),
                sni_names: vec!["localhost".into()],
                cert_chain_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
                    .into(),
                private_key_pem: "-----BEGIN PRIVATE KEY-----\nBBBB\n-----END PRIVATE KEY-----\n"
                    .into(),
                default: true,
                private_key_fingerprint: String::new(),
            }],
            tls: Some(TlsSettings {
                ticket_keys: vec![TicketKey {
                    name: vec![1; 16],
                    secret: vec![0xab; 32],
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_with_keys_is_lossless() -> Result<(), ConfigError> {
        let s = sample();
        let text = to_toml_string(&s, Keys::Include)?;
        assert!(text.contains("state = \"DRAINING\""), "{text}");
        assert!(text.contains("lb_policy = \"least_request\""), "{text}");
        assert!(text.contains("hash = \"source_ip\""), "{text}");
        assert!(text.contains(&"ab".repeat(32)), "{text}");
        let back = from_toml_str(&text, Path::new("."))?;
        assert_eq!(back, s);
        Ok(())
    }

    /// The Admin API returns certificates with a fingerprint instead of the
    /// key: a document with the same key is no change, another key is.
    #[test]
    fn diff_compares_keys_by_fingerprint_when_the_state_has_none() {
        let stored = |key: &str| Snapshot {
            certificates: vec![Certificate {
                name: "web".into(),
                sni_names: vec!["example.com".into()],
                cert_chain_pem: "CHAIN".into(),
                private_key_pem: String::new(),
                private_key_fingerprint: key_fingerprint(key),
                default: true,
            }],
            ..Default::default()
        };
        let mut desired = stored("KEY-A");
        desired.certificates[0].private_key_pem = "KEY-A\n".into();
        desired.certificates[0].private_key_fingerprint = String::new();
        assert!(diff(&stored("KEY-A"), &desired, false).entries.is_empty());
        let d = diff(&stored("KEY-B"), &desired, false);
        assert_eq!(d.entries.len(), 1, "{:?}", d.entries);
        assert!(
            d.entries[0]
                .fields
                .iter()
                .any(|f| f.starts_with("private_key_fingerprint")),
            "{:?}",
            d.entries
        );
        // The put carries the key itself.
        match &d.changes[0].change {
            Some(change::Change::PutCertificate(c)) => assert_eq!(c.private_key_pem, "KEY-A\n"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fingerprint_mode_hides_keys_and_diff_keeps_them() -> Result<(), ConfigError> {
        let s = sample();
        let text = to_toml_string(&s, Keys::Fingerprint)?;
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(!text.contains(&"ab".repeat(32)), "{text}");
        assert!(text.contains(&key_fingerprint(&s.certificates[0].private_key_pem)));
        let back = from_toml_str(&text, Path::new("."))?;
        assert_eq!(back.certificates[0].private_key_pem, "");
        // Without keys the document still matches the state it came from.
        let d = diff(&s, &back, true);
        assert!(d.is_empty(), "{:?}", d.entries);
        Ok(())
    }

    #[test]
    fn readable_input_files_and_errors() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("certs"))?;
        std::fs::write(dir.path().join("certs/c.pem"), "CHAIN")?;
        std::fs::write(dir.path().join("certs/k.pem"), "KEY")?;
        let doc = r#"
            [[nodes]]
            id = "n1"
            address = "127.0.0.1:1"
            state = "node_state_disabled"
            weight = 5

            [[clusters]]
            name = "c"
            lb_policy = "ROUND_ROBIN"
            endpoints = [{ address = "127.0.0.1:2" }]

            [[certificates]]
            name = "x"
            cert_file = "certs/c.pem"
            key_file = "certs/k.pem"
        "#;
        let path = dir.path().join("tandem.toml");
        std::fs::write(&path, doc)?;
        let s = load_file(&path)?;
        assert_eq!(s.nodes[0].state, NodeState::Disabled as i32);
        assert_eq!(s.clusters[0].endpoints[0].address, "127.0.0.1:2");
        assert_eq!(s.certificates[0].cert_chain_pem, "CHAIN");
        assert_eq!(s.certificates[0].private_key_pem, "KEY");

        let err = |t: &str| from_toml_str(t, dir.path()).err().map(|e| e.to_string());
        let e = err("[[nodes]]\nid = \"n\"\nstate = \"SLEEPY\"\n").unwrap_or_default();
        assert!(e.contains("SLEEPY") && e.contains("draining"), "{e}");
        let e = err("nodez = []\n").unwrap_or_default();
        assert!(e.contains("nodez"), "{e}");
        let e = err("[[certificates]]\nname = \"x\"\nkey_fil = \"k\"\n").unwrap_or_default();
        assert!(e.contains("key_fil"), "{e}");
        let e =
            err("[[certificates]]\nname = \"x\"\nkey_file = \"nope.pem\"\n").unwrap_or_default();
        assert!(e.contains("nope.pem"), "{e}");
        let e = err(
            "[[certificates]]\nname = \"x\"\nprivate_key_pem = \"KEY\"\nprivate_key_fingerprint = \"sha256:00\"\n",
        )
        .unwrap_or_default();
        assert!(e.contains("fingerprint"), "{e}");
        Ok(())
    }

    #[test]
    fn diff_puts_changes_and_prunes() {
        let current = sample();
        let mut desired = sample();
        desired.nodes[0].weight = 50;
        desired.nodes.push(Node {
            id: "node-2".into(),
            ..Default::default()
        });
        desired.routes.clear();
        let d = diff(&current, &desired, false);
        let lines: Vec<String> = d.entries.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec!["~ node node-1: weight: 100 -> 50", "+ node node-2"]
        );
        assert_eq!(d.changes.len(), 2);
        let d = diff(&current, &desired, true);
        let lines: Vec<String> = d.entries.iter().map(ToString::to_string).collect();
        assert_eq!(lines.last().map(String::as_str), Some("- route all"));
        assert!(matches!(
            d.changes.last().and_then(|c| c.change.as_ref()),
            Some(change::Change::Delete(pb::Delete { name, .. })) if name == "all"
        ));
        // A new key shows as changed, without its value.
        let mut desired = sample();
        desired.certificates[0].private_key_pem = "OTHER".into();
        let lines: Vec<String> = diff(&current, &desired, false)
            .entries
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            vec!["~ certificate localhost: private_key_pem changed"]
        );
    }
}
