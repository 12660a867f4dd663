//! Applying a batch of changes to a copy of a snapshot.
//!
//! Puts create or replace a resource by name (a node by id); a delete of a
//! resource that does not exist is an error. The result is not validated
//! here: the caller validates the whole candidate.

use control_api::pb::{Change, ResourceKind, Snapshot, change};

/// Why a batch could not be applied (before validation).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("changes[{index}]: empty change")]
    Empty { index: usize },
    #[error("changes[{index}]: delete of kind {kind} (give a resource kind)")]
    BadKind { index: usize, kind: i32 },
    #[error("changes[{index}]: {kind} {name:?} not found")]
    NotFound {
        index: usize,
        kind: &'static str,
        name: String,
    },
}

// `clone` stays: settings messages may stop being `Copy` as fields are added.
#[allow(clippy::clone_on_copy)]
/// Returns a copy of `base` with every change applied in order. The
/// version is left as it was in `base`.
pub fn apply_changes(base: &Snapshot, changes: &[Change]) -> Result<Snapshot, ChangeError> {
    let mut s = base.clone();
    for (index, c) in changes.iter().enumerate() {
        match &c.change {
            None => return Err(ChangeError::Empty { index }),
            Some(change::Change::PutService(x)) => put(&mut s.services, x.clone(), |r| &r.name),
            Some(change::Change::PutNode(x)) => put(&mut s.nodes, x.clone(), |r| &r.id),
            Some(change::Change::PutCluster(x)) => put(&mut s.clusters, x.clone(), |r| &r.name),
            Some(change::Change::PutRoute(x)) => put(&mut s.routes, x.clone(), |r| &r.name),
            Some(change::Change::PutCertificate(x)) => {
                let mut x = x.clone();
                if x.private_key_pem.is_empty() {
                    // No key given: keep the one stored under this name (read
                    // RPCs never return keys, so a read-modify-write works).
                    if let Some(old) = s.certificates.iter().find(|c| c.name == x.name) {
                        x.private_key_pem = old.private_key_pem.clone();
                    }
                }
                put(&mut s.certificates, x, |r| &r.name)
            }
            Some(change::Change::SetTls(x)) => {
                let mut x = x.clone();
                for k in x.ticket_keys.iter_mut().filter(|k| k.secret.is_empty()) {
                    if let Some(old) = s
                        .tls
                        .as_ref()
                        .and_then(|t| t.ticket_keys.iter().find(|o| o.name == k.name))
                    {
                        k.secret = old.secret.clone();
                    }
                }
                s.tls = Some(x);
            }
            Some(change::Change::SetListener(x)) => s.listener = Some(x.clone()),
            Some(change::Change::Delete(d)) => {
                let kind = ResourceKind::try_from(d.kind).unwrap_or(ResourceKind::Unspecified);
                let found = match kind {
                    ResourceKind::Unspecified => {
                        return Err(ChangeError::BadKind {
                            index,
                            kind: d.kind,
                        });
                    }
                    ResourceKind::Service => delete(&mut s.services, &d.name, |r| &r.name),
                    ResourceKind::Node => delete(&mut s.nodes, &d.name, |r| &r.id),
                    ResourceKind::Cluster => delete(&mut s.clusters, &d.name, |r| &r.name),
                    ResourceKind::Route => delete(&mut s.routes, &d.name, |r| &r.name),
                    ResourceKind::Certificate => delete(&mut s.certificates, &d.name, |r| &r.name),
                };
                if !found {
                    return Err(ChangeError::NotFound {
                        index,
                        kind: kind_name(kind),
                        name: d.name.clone(),
                    });
                }
            }
        }
    }
    Ok(s)
}

/// One line for the audit trail: "put node node-1", "delete route api".
pub fn describe(c: &Change) -> String {
    match &c.change {
        None => "empty".into(),
        Some(change::Change::PutService(x)) => format!("put service {}", x.name),
        Some(change::Change::PutNode(x)) => format!("put node {}", x.id),
        Some(change::Change::PutCluster(x)) => format!("put cluster {}", x.name),
        Some(change::Change::PutRoute(x)) => format!("put route {}", x.name),
        Some(change::Change::PutCertificate(x)) => format!("put certificate {}", x.name),
        Some(change::Change::SetTls(x)) => {
            format!("set tls ({} ticket keys)", x.ticket_keys.len())
        }
        Some(change::Change::SetListener(_)) => "set listener".into(),
        Some(change::Change::Delete(d)) => format!(
            "delete {} {}",
            kind_name(ResourceKind::try_from(d.kind).unwrap_or(ResourceKind::Unspecified)),
            d.name
        ),
    }
}

/// Lower-case name of a resource kind, for messages.
pub fn kind_name(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Unspecified => "resource",
        ResourceKind::Service => "service",
        ResourceKind::Node => "node",
        ResourceKind::Cluster => "cluster",
        ResourceKind::Route => "route",
        ResourceKind::Certificate => "certificate",
    }
}

fn put<T>(list: &mut Vec<T>, item: T, key: impl Fn(&T) -> &String) {
    match list.iter().position(|r| key(r) == key(&item)) {
        Some(i) => list[i] = item,
        None => list.push(item),
    }
}

fn delete<T>(list: &mut Vec<T>, name: &str, key: impl Fn(&T) -> &String) -> bool {
    let before = list.len();
    list.retain(|r| key(r) != name);
    list.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;
    use control_api::pb::{Delete, Node};

    fn put_node(id: &str, weight: u32) -> Change {
        Change {
            change: Some(change::Change::PutNode(Node {
                id: id.into(),
                weight,
                ..Default::default()
            })),
        }
    }

    fn del(kind: ResourceKind, name: &str) -> Change {
        Change {
            change: Some(change::Change::Delete(Delete {
                kind: kind as i32,
                name: name.into(),
            })),
        }
    }

    #[test]
    fn put_replaces_in_place_and_appends() {
        let s = apply_changes(
            &Snapshot::default(),
            &[put_node("a", 1), put_node("b", 2), put_node("a", 3)],
        )
        .expect("applies");
        let got: Vec<(&str, u32)> = s.nodes.iter().map(|n| (n.id.as_str(), n.weight)).collect();
        assert_eq!(got, vec![("a", 3), ("b", 2)]);
    }

    #[test]
    fn delete_missing_is_not_found() {
        let base = apply_changes(&Snapshot::default(), &[put_node("a", 1)]).expect("applies");
        let s = apply_changes(&base, &[del(ResourceKind::Node, "a")]).expect("applies");
        assert!(s.nodes.is_empty());
        assert_eq!(
            apply_changes(&base, &[del(ResourceKind::Node, "b")]),
            Err(ChangeError::NotFound {
                index: 0,
                kind: "node",
                name: "b".into()
            })
        );
        assert_eq!(
            apply_changes(&base, &[del(ResourceKind::Unspecified, "a")]),
            Err(ChangeError::BadKind { index: 0, kind: 0 })
        );
        assert_eq!(
            apply_changes(&base, &[Change { change: None }]),
            Err(ChangeError::Empty { index: 0 })
        );
    }
}
