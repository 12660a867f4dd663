//! TLS session tickets sealed with keys shared by every node.
//!
//! The control plane distributes `TlsSettings.ticket_keys`: the first key
//! seals new tickets, every key opens them, so a client that got a ticket
//! from one node resumes on another, and a rotation (new key first, old key
//! kept second) does not break tickets already out. With no keys from
//! control, a random key local to this process is used.
//!
//! A ticket is `key name (16) || nonce (12) || AES-256-GCM(state) || tag (16)`,
//! the key name also bound as additional data.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

pub const KEY_NAME_LEN: usize = 16;
pub const KEY_SECRET_LEN: usize = 32;
pub const DEFAULT_LIFETIME_S: u32 = 12 * 3600;

struct Key {
    name: [u8; KEY_NAME_LEN],
    aead: LessSafeKey,
}

impl Key {
    fn new(name: &[u8], secret: &[u8]) -> Result<Key, String> {
        let name: [u8; KEY_NAME_LEN] = name
            .try_into()
            .map_err(|_| format!("ticket key name must be {KEY_NAME_LEN} bytes"))?;
        if secret.len() != KEY_SECRET_LEN {
            return Err(format!("ticket key secret must be {KEY_SECRET_LEN} bytes"));
        }
        let unbound = UnboundKey::new(&AES_256_GCM, secret)
            .map_err(|_| "ticket key secret rejected by AES-256-GCM".to_string())?;
        Ok(Key {
            name,
            aead: LessSafeKey::new(unbound),
        })
    }

    fn random(rng: &SystemRandom) -> Result<Key, String> {
        let mut name = [0u8; KEY_NAME_LEN];
        let mut secret = [0u8; KEY_SECRET_LEN];
        rng.fill(&mut name)
            .and_then(|()| rng.fill(&mut secret))
            .map_err(|_| "no randomness for a ticket key".to_string())?;
        Key::new(&name, &secret)
    }
}

/// The node's ticketer: keys swapped in by [`SharedTicketer::set_keys`]
/// without rebuilding anything that holds it.
pub struct SharedTicketer {
    keys: ArcSwap<Vec<Key>>,
    local: Arc<Vec<Key>>,
    lifetime: AtomicU32,
    rng: SystemRandom,
}

impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTicketer")
            .field("keys", &self.keys.load().len())
            .finish_non_exhaustive()
    }
}

impl SharedTicketer {
    pub fn new() -> Result<Arc<SharedTicketer>, String> {
        let rng = SystemRandom::new();
        let local = Arc::new(vec![Key::random(&rng)?]);
        Ok(Arc::new(SharedTicketer {
            keys: ArcSwap::new(local.clone()),
            local,
            lifetime: AtomicU32::new(DEFAULT_LIFETIME_S),
            rng,
        }))
    }

    /// Checks the keys of a snapshot; `Ok` holds what [`Self::install`] takes.
    pub(crate) fn compile(settings: &control_api::pb::TlsSettings) -> Result<CompiledKeys, String> {
        let keys = settings
            .ticket_keys
            .iter()
            .enumerate()
            .map(|(i, k)| Key::new(&k.name, &k.secret).map_err(|e| format!("ticket key {i}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CompiledKeys {
            keys,
            lifetime: if settings.ticket_lifetime_s == 0 {
                DEFAULT_LIFETIME_S
            } else {
                settings.ticket_lifetime_s
            },
        })
    }

    /// Uses `keys` from now on (the process-local key when there are none).
    pub(crate) fn install(&self, keys: CompiledKeys) {
        if keys.keys.is_empty() {
            self.keys.store(self.local.clone());
        } else {
            self.keys.store(Arc::new(keys.keys));
        }
        self.lifetime.store(keys.lifetime, Ordering::Relaxed);
    }
}

/// Ticket keys checked but not yet in use.
pub(crate) struct CompiledKeys {
    keys: Vec<Key>,
    lifetime: u32,
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime.load(Ordering::Relaxed)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.load();
        let key = keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(KEY_NAME_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name),
                &mut sealed,
            )
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let name = cipher.get(..KEY_NAME_LEN)?;
        let nonce: [u8; NONCE_LEN] = cipher
            .get(KEY_NAME_LEN..KEY_NAME_LEN + NONCE_LEN)?
            .try_into()
            .ok()?;
        let keys = self.keys.load();
        let key = keys.iter().find(|k| k.name == name)?;
        let mut data = cipher.get(KEY_NAME_LEN + NONCE_LEN..)?.to_vec();
        let plain = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name),
                &mut data,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(keys: &[(u8, u8)]) -> control_api::pb::TlsSettings {
        control_api::pb::TlsSettings {
            ticket_keys: keys
                .iter()
                .map(|&(n, s)| control_api::pb::TicketKey {
                    name: vec![n; KEY_NAME_LEN],
                    secret: vec![s; KEY_SECRET_LEN],
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn rotation_keeps_old_tickets_and_refuses_tampering() {
        let a = SharedTicketer::new().expect("ticketer");
        let b = SharedTicketer::new().expect("ticketer");
        // Local keys: a ticket from one process does not open on another.
        let t = a.encrypt(b"state").expect("seal");
        assert_eq!(a.decrypt(&t).as_deref(), Some(&b"state"[..]));
        assert_eq!(b.decrypt(&t), None);

        a.install(SharedTicketer::compile(&settings(&[(1, 1)])).expect("keys"));
        b.install(SharedTicketer::compile(&settings(&[(1, 1)])).expect("keys"));
        let t1 = a.encrypt(b"one").expect("seal");
        assert_eq!(b.decrypt(&t1).as_deref(), Some(&b"one"[..]));
        // Rotate on b: the new key seals, the old one still opens.
        b.install(SharedTicketer::compile(&settings(&[(2, 2), (1, 1)])).expect("keys"));
        assert_eq!(b.decrypt(&t1).as_deref(), Some(&b"one"[..]));
        let t2 = b.encrypt(b"two").expect("seal");
        assert_eq!(&t2[..KEY_NAME_LEN], &[2u8; KEY_NAME_LEN]);
        assert_eq!(a.decrypt(&t2), None, "a does not know key 2 yet");
        // Dropped key: its tickets no longer open.
        b.install(SharedTicketer::compile(&settings(&[(2, 2)])).expect("keys"));
        assert_eq!(b.decrypt(&t1), None);
        // A flipped bit fails authentication.
        let mut bad = t2.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(b.decrypt(&bad), None);
        assert_eq!(b.decrypt(&t2[..10]), None);
        // Bad key material is refused.
        let mut s = settings(&[(1, 1)]);
        s.ticket_keys[0].secret.truncate(16);
        assert!(SharedTicketer::compile(&s).is_err());
    }
}
