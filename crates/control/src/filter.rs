//! What each subscriber receives of the state.
//!
//! A director needs services and nodes only: no clusters, routes or
//! certificates (so no private key ever reaches the L4 tier). A node gets
//! everything but the services (VIPs are the director's business); it keeps
//! the node list, where it finds its own entry. Other watchers (tier
//! unspecified, e.g. `tandemctl watch`) get everything without private keys.

use control_api::pb::{Snapshot, Tier};

/// The part of `s` a subscriber of `tier` receives.
pub fn for_subscriber(s: &Snapshot, tier: Tier) -> Snapshot {
    match tier {
        // Only what is named: resources added later stay away from directors
        // until they are added here.
        Tier::Director => Snapshot {
            version: s.version,
            services: s.services.clone(),
            nodes: s.nodes.clone(),
            ..Default::default()
        },
        Tier::Node => Snapshot {
            services: Vec::new(),
            ..s.clone()
        },
        Tier::Unspecified => redact_keys(s),
    }
}

/// `s` without secrets: no private keys (each replaced by its
/// fingerprint), no ticket key secrets.
pub fn redact_keys(s: &Snapshot) -> Snapshot {
    let mut s = s.clone();
    for c in &mut s.certificates {
        c.private_key_fingerprint = if c.private_key_pem.is_empty() {
            String::new()
        } else {
            control_api::config::key_fingerprint(&c.private_key_pem)
        };
        c.private_key_pem.clear();
    }
    if let Some(tls) = &mut s.tls {
        for k in &mut tls.ticket_keys {
            k.secret.clear();
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use control_api::pb::{Certificate, Cluster, Node, Service};

    #[test]
    fn tiers() {
        let s = Snapshot {
            version: 4,
            services: vec![Service::default()],
            nodes: vec![Node::default()],
            clusters: vec![Cluster::default()],
            certificates: vec![Certificate {
                private_key_pem: "KEY".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let d = for_subscriber(&s, Tier::Director);
        assert_eq!((d.version, d.services.len(), d.nodes.len()), (4, 1, 1));
        assert!(d.clusters.is_empty() && d.certificates.is_empty());
        let n = for_subscriber(&s, Tier::Node);
        assert!(n.services.is_empty());
        assert_eq!(n.certificates[0].private_key_pem, "KEY");
        assert_eq!(n.nodes.len(), 1);
        let o = for_subscriber(&s, Tier::Unspecified);
        assert_eq!(o.certificates[0].private_key_pem, "");
        assert_eq!(
            o.certificates[0].private_key_fingerprint,
            control_api::config::key_fingerprint("KEY")
        );
    }
}
