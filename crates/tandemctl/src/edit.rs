//! `get NAME` and `set NAME --field value ...` for every resource kind, and
//! reading a desired-state document in TOML or YAML.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use control_api::pb::{self, Change, Snapshot, change};
use serde_json::{Value, json};

use crate::table::Table;
use crate::{ATTEMPTS, Ctl, Output};

/// A kind of named resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Res {
    Node,
    Service,
    Route,
    Cluster,
    Cert,
}

impl Res {
    pub fn label(self) -> &'static str {
        match self {
            Res::Node => "node",
            Res::Service => "service",
            Res::Route => "route",
            Res::Cluster => "cluster",
            Res::Cert => "certificate",
        }
    }

    /// The resource named `name` in `s`, as its API fields.
    pub fn find(self, s: &Snapshot, name: &str) -> Result<Option<Value>> {
        let v = match self {
            Res::Node => s
                .nodes
                .iter()
                .find(|n| n.id == name)
                .map(serde_json::to_value),
            Res::Service => s
                .services
                .iter()
                .find(|n| n.name == name)
                .map(serde_json::to_value),
            Res::Route => s
                .routes
                .iter()
                .find(|n| n.name == name)
                .map(serde_json::to_value),
            Res::Cluster => s
                .clusters
                .iter()
                .find(|n| n.name == name)
                .map(serde_json::to_value),
            Res::Cert => s
                .certificates
                .iter()
                .find(|n| n.name == name)
                .map(serde_json::to_value),
        };
        Ok(v.transpose()?)
    }
}

/// One field change for the report: `field: old -> new`.
pub fn changed<T: std::fmt::Debug + PartialEq>(
    what: &mut Vec<String>,
    field: &str,
    old: &mut T,
    new: Option<T>,
) {
    if let Some(new) = new
        && *old != new
    {
        what.push(format!("{field}: {old:?} -> {new:?}"));
        *old = new;
    }
}

impl Ctl {
    /// `KIND get NAME`: every field of one resource (keys as fingerprints).
    pub async fn get_one(&self, res: Res, name: &str) -> Result<()> {
        let s = self.get_state().await?;
        let v = res
            .find(&s, name)?
            .ok_or_else(|| anyhow!("not found: no {} {name:?}", res.label()))?;
        if self.output != Output::Table {
            return self.print_json(&v);
        }
        let mut t = Table::new(&["FIELD", "VALUE"]);
        if let Value::Object(map) = &v {
            for (k, val) in map {
                let text = match val {
                    Value::String(s) if s.contains('\n') => {
                        format!("({} lines)", s.lines().count())
                    }
                    Value::String(s) => s.clone(),
                    Value::Array(a) if a.iter().all(Value::is_string) => a
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(","),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                t.row(vec![k.clone(), text]);
            }
        }
        out!("{}", t.render());
        Ok(())
    }

    /// `KIND set NAME ...`: read, edit, write with the version read (or
    /// `if_version`). Without `if_version` a conflict is retried; with it,
    /// it is reported.
    pub async fn set_one<F>(
        &self,
        res: Res,
        name: &str,
        if_version: Option<u64>,
        edit: F,
    ) -> Result<()>
    where
        F: Fn(&Snapshot) -> Result<(change::Change, Vec<String>)>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let state = self.get_state().await?;
            let (c, what) = edit(&state)?;
            if what.is_empty() {
                return self.set_report(res, name, &["nothing to change".into()], state.version);
            }
            let req = pb::ApplyRequest {
                changes: vec![Change { change: Some(c) }],
                expected_version: if_version.unwrap_or(state.version),
            };
            match self.admin().apply(req).await {
                Ok(r) => return self.set_report(res, name, &what, r.into_inner().version),
                Err(s) if s.code() == tonic::Code::Aborted => {
                    if let Some(v) = if_version {
                        bail!(
                            "conflict: --if-version {v}, but the state is at version {} (someone changed it; read it again): {}",
                            state.version.max(v),
                            s.message()
                        );
                    }
                    if attempt >= ATTEMPTS {
                        bail!(
                            "the state kept changing; gave up after {ATTEMPTS} attempts: {}",
                            s.message()
                        );
                    }
                }
                Err(s) => return Err(self.rpc_error(&s)),
            }
        }
    }

    fn set_report(&self, res: Res, name: &str, what: &[String], version: u64) -> Result<()> {
        if self.output != Output::Table {
            return self.print_json(&json!({
                "kind": res.label(), "name": name, "action": "set", "changes": what, "version": version,
            }));
        }
        outln!(
            "{} {name}: {} (version {version})",
            res.label(),
            what.join(", ")
        );
        Ok(())
    }
}

/// Whether `path` holds YAML: by extension (`.yaml`, `.yml`), else by
/// content (not TOML but YAML).
pub fn is_yaml(path: &Path, text: &str) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml") => true,
        Some(e) if e.eq_ignore_ascii_case("toml") => false,
        _ => {
            toml::from_str::<toml::Table>(text).is_err()
                && serde_norway::from_str::<serde_norway::Value>(text).is_ok()
        }
    }
}

/// Reads a desired-state document (`apply -f`, `state import`): the
/// `control_api::config` format, in TOML or YAML.
pub fn load_document(path: &Path) -> Result<Snapshot> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if !is_yaml(path, &text) {
        return Ok(control_api::config::load_file(path)?);
    }
    let doc: control_api::config::Document = serde_norway::from_str(&text)
        .map_err(|e| anyhow!("{}: not a Tandem state document: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    Ok(doc.into_snapshot(base)?)
}

/// A document as YAML (`state export --format yaml`).
pub fn to_yaml(snapshot: &Snapshot, keys: control_api::config::Keys) -> Result<String> {
    let doc = control_api::config::Document::from_snapshot(snapshot, keys);
    Ok(serde_norway::to_string(&doc)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_by_extension_or_content() {
        assert!(is_yaml(Path::new("a.yaml"), ""));
        assert!(is_yaml(Path::new("a.YML"), ""));
        assert!(!is_yaml(Path::new("a.toml"), "nodes:\n  - id: x\n"));
        assert!(is_yaml(Path::new("state"), "nodes:\n  - id: x\n"));
        assert!(!is_yaml(Path::new("state"), "[[nodes]]\nid = \"x\"\n"));
    }

    #[test]
    fn yaml_document_round_trips() -> Result<()> {
        let s = Snapshot {
            nodes: vec![pb::Node {
                id: "n1".into(),
                address: "127.0.0.1:8001".into(),
                weight: 7,
                state: pb::NodeState::Draining as i32,
                pool: "default".into(),
                mac: "02:00:00:00:00:01".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let yaml = to_yaml(&s, control_api::config::Keys::Fingerprint)?;
        assert!(yaml.contains("DRAINING"), "{yaml}");
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("state.yaml");
        std::fs::write(&p, &yaml)?;
        let back = load_document(&p)?;
        assert_eq!(back.nodes, s.nodes);
        Ok(())
    }
}
