//! TLS session ticket keys, made and rotated by control.
//!
//! Every node encrypts tickets with `ticket_keys[0]` and decrypts with any
//! key in the list, so a client that got a ticket from one node resumes on
//! any other. Control makes a new key every `interval`, puts it first and
//! keeps the previous ones (up to [`KEEP`] in all), so tickets issued under a
//! retired current key still resume until they age out. A key's name holds
//! its creation time (8 bytes, big-endian Unix seconds) and 8 random bytes,
//! so the age survives a restart of control with no extra state.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use control_api::pb::{Change, TicketKey, TlsSettings, change};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::State;
use crate::auth::{Principal, Role};

/// Keys kept: the current one and two previous ones.
pub const KEEP: usize = 3;

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Creation time encoded in a key name, if it has the expected shape.
pub fn created_at(key: &TicketKey) -> Option<u64> {
    let b: [u8; 8] = key.name.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// A fresh key created at `now` (Unix seconds).
pub fn new_key(now: u64) -> TicketKey {
    let mut rng = rand::rng();
    let mut name = now.to_be_bytes().to_vec();
    name.extend_from_slice(&rng.random::<[u8; 8]>());
    TicketKey {
        name,
        secret: rng.random::<[u8; 32]>().to_vec(),
    }
}

/// The TLS settings after one rotation step at `now`, or `None` when the
/// current key is younger than `interval`.
pub fn rotated(current: Option<&TlsSettings>, interval: Duration, now: u64) -> Option<TlsSettings> {
    let mut tls = current.cloned().unwrap_or_default();
    let due = match tls.ticket_keys.first().and_then(created_at) {
        Some(t) => now.saturating_sub(t) >= interval.as_secs(),
        None => true,
    };
    if !due {
        return None;
    }
    tls.ticket_keys.insert(0, new_key(now));
    tls.ticket_keys.truncate(KEEP);
    Some(tls)
}

/// Rotates now if due, then checks again every minute until `shutdown`.
pub async fn rotate_forever(state: Arc<State>, interval: Duration, shutdown: CancellationToken) {
    loop {
        let snap = state.snapshot();
        if let Some(tls) = rotated(snap.tls.as_ref(), interval, now_s()) {
            // The secrets of kept keys travel empty: "keep what is stored".
            let mut change = tls.clone();
            for k in change.ticket_keys.iter_mut().skip(1) {
                k.secret.clear();
            }
            let who = Principal {
                name: "control (ticket key rotation)".into(),
                role: Some(Role::Admin),
            };
            let c = Change {
                change: Some(change::Change::SetTls(change)),
            };
            match state.apply_as(vec![c], snap.version, who, None).await {
                Ok(v) => tracing::info!(
                    version = v,
                    keys = tls.ticket_keys.len(),
                    "rotated TLS session ticket keys"
                ),
                // A concurrent change moved the version on: try again next round.
                Err(e) => tracing::warn!(error = %e, "ticket key rotation not applied; will retry"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60).min(interval)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_adds_a_key_first_and_keeps_three() {
        let day = Duration::from_secs(86_400);
        let first = rotated(None, day, 1_000_000).expect("no keys: rotate");
        assert_eq!(first.ticket_keys.len(), 1);
        assert_eq!(created_at(&first.ticket_keys[0]), Some(1_000_000));
        assert_eq!(first.ticket_keys[0].secret.len(), 32);
        assert!(
            rotated(Some(&first), day, 1_000_000 + 3600).is_none(),
            "young key stays"
        );
        let mut tls = first;
        for i in 1..=4u64 {
            tls = rotated(Some(&tls), day, 1_000_000 + i * 86_400).expect("due");
        }
        assert_eq!(tls.ticket_keys.len(), KEEP);
        let ages: Vec<_> = tls.ticket_keys.iter().filter_map(created_at).collect();
        assert_eq!(
            ages,
            vec![
                1_000_000 + 4 * 86_400,
                1_000_000 + 3 * 86_400,
                1_000_000 + 2 * 86_400
            ]
        );
    }

    #[test]
    fn other_tls_settings_survive_rotation() {
        let tls = TlsSettings {
            client_ca_pem: "CA".into(),
            ticket_lifetime_s: 600,
            ..Default::default()
        };
        let r = rotated(Some(&tls), Duration::from_secs(1), 10).expect("due");
        assert_eq!(r.client_ca_pem, "CA");
        assert_eq!(r.ticket_lifetime_s, 600);
    }
}
