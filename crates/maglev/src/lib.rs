#![forbid(unsafe_code)]
//! Weighted Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and
//! Reliable Software Network Load Balancer", NSDI 2016, section 3.4).
//!
//! The crate is pure and I/O-free: it turns a set of named, weighted backends
//! into a lookup table of prime size `M`, and maps a 64-bit flow hash to the
//! backend owning slot `hash % M`.
//!
//! # Hash version 1
//!
//! Every backend's permutation is derived only from its stable *name* (never
//! from its position in a list), so that every node that builds a table from
//! the same set of backends gets the same table, byte for byte:
//!
//! * `h1 = XXH64(name as UTF-8 bytes, seed 0x5441_4e44_454d_0001)`
//! * `h2 = XXH64(name as UTF-8 bytes, seed 0x5441_4e44_454d_0002)`
//! * `offset = h1 % M`
//! * `skip = h2 % (M - 1) + 1`
//!
//! XXH64 is a fixed, fully specified algorithm, so these values are stable
//! across platforms and releases. Any change to this derivation (or to the
//! population loop in [`populate`]) must bump [`HASH_VERSION`], because it
//! changes which backend a flow is sent to.
//!
//! # Weights
//!
//! [`populate`] generalises the paper's round-robin loop: in every round each
//! backend adds `weight / max_weight` to a credit and takes one turn per whole
//! unit of credit (computed in exact integer arithmetic). With equal weights
//! every backend takes exactly one turn per round, which is exactly the paper's
//! algorithm. Backends of weight 0 take no slots.
//!
//! # Example
//!
//! ```
//! use maglev::{Backend, Table};
//! let backends = vec![
//!     Backend { name: "a".into(), weight: 1 },
//!     Backend { name: "b".into(), weight: 1 },
//! ];
//! let table = Table::build(&backends, 5003).unwrap();
//! assert!(table.lookup(0xdead_beef).is_some());
//! ```

/// The default table size: a prime, and at least 100 times the number of
/// backends for up to 655 backends (which keeps the imbalance under 1%).
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

/// Version of the permutation hash and population algorithm.
///
/// Bump it whenever [`permutation`] or [`populate`] would produce different
/// output for the same input.
pub const HASH_VERSION: u32 = 1;

/// XXH64 seed for a backend's offset (`"TANDEM"` followed by 0x0001).
pub const OFFSET_SEED: u64 = 0x5441_4e44_454d_0001;
/// XXH64 seed for a backend's skip (`"TANDEM"` followed by 0x0002).
pub const SKIP_SEED: u64 = 0x5441_4e44_454d_0002;

/// A backend taking part in the table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Stable, unique name; the permutation is derived from it.
    pub name: String,
    /// Relative weight; 0 means the backend takes no slots.
    pub weight: u32,
}

impl Backend {
    /// A backend with the given name and weight.
    pub fn new(name: impl Into<String>, weight: u32) -> Self {
        Self {
            name: name.into(),
            weight,
        }
    }
}

/// Errors when building a table.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum MaglevError {
    /// The table size must be a prime number.
    #[error("table size {size} is not prime")]
    NotPrime {
        /// The requested size.
        size: u32,
    },
    /// The table must have at least one slot per weighted backend.
    #[error("table size {size} is smaller than the number of weighted backends ({backends})")]
    TooSmall {
        /// The requested size.
        size: u32,
        /// The number of backends with a non-zero weight.
        backends: usize,
    },
    /// Two backends have the same name.
    #[error("duplicate backend name {0:?}")]
    DuplicateName(String),
    /// A permutation passed to [`populate`] is not valid for the table size
    /// (offset must be `< m`, skip must be in `1..m`).
    #[error(
        "invalid permutation for backend {index}: offset {offset}, skip {skip}, table size {size}"
    )]
    InvalidPermutation {
        /// Index of the offending triple.
        index: usize,
        /// Its offset.
        offset: u32,
        /// Its skip.
        skip: u32,
        /// The table size.
        size: u32,
    },
    /// More backends than can be indexed by a `u32`.
    #[error("too many backends ({0})")]
    TooManyBackends(usize),
}

/// Whether `n` is prime (deterministic trial division; fast for any `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d: u64 = 5;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// `(offset, skip)` of a backend's permutation for table size `m`, from its
/// stable name (hash version 1, see the crate docs):
/// `offset = h1(name) % m`, `skip = h2(name) % (m - 1) + 1`.
///
/// `m` should be a prime `>= 2`; for `m < 2` the result is `(0, 1)`.
pub fn permutation(name: &str, m: u32) -> (u32, u32) {
    if m < 2 {
        return (0, 1);
    }
    let h1 = xxhash_rust::xxh64::xxh64(name.as_bytes(), OFFSET_SEED);
    let h2 = xxhash_rust::xxh64::xxh64(name.as_bytes(), SKIP_SEED);
    let m64 = u64::from(m);
    // Both results are < m, which fits in u32.
    let offset = (h1 % m64) as u32;
    let skip = (h2 % (m64 - 1)) as u32 + 1;
    (offset, skip)
}

/// The Maglev population loop on explicit `(offset, skip, weight)` triples.
///
/// Returns, for every slot `0..m`, the index (into `perms`) of the backend
/// owning it. Backends take turns in index order; in each round a backend
/// with weight `w` gains `w / max_weight` credit and takes one turn per whole
/// unit of credit, so with equal weights this is exactly the paper's
/// algorithm. A turn claims the backend's next preferred slot that is still
/// empty. Weight-0 backends take no slots; if every weight is 0 (or `perms` is
/// empty) the result is empty.
///
/// # Errors
///
/// [`MaglevError::NotPrime`] if `m` is not prime (the permutations would not
/// cover the table), [`MaglevError::InvalidPermutation`] if an offset is
/// `>= m` or a skip is not in `1..m`.
pub fn populate(perms: &[(u32, u32, u32)], m: u32) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(m) {
        return Err(MaglevError::NotPrime { size: m });
    }
    if u32::try_from(perms.len()).is_err() {
        return Err(MaglevError::TooManyBackends(perms.len()));
    }
    for (index, &(offset, skip, _)) in perms.iter().enumerate() {
        if offset >= m || skip == 0 || skip >= m {
            return Err(MaglevError::InvalidPermutation {
                index,
                offset,
                skip,
                size: m,
            });
        }
    }
    let max_weight = perms.iter().map(|p| p.2).max().unwrap_or(0);
    if max_weight == 0 {
        return Ok(Vec::new());
    }

    // Per weighted backend: (index, current slot, skip, weight, credit).
    struct State {
        index: u32,
        next: u64,
        skip: u64,
        weight: u64,
        credit: u64,
    }
    let mut states: Vec<State> = perms
        .iter()
        .enumerate()
        .filter(|(_, p)| p.2 > 0)
        .map(|(i, &(offset, skip, weight))| State {
            // Fits: checked above that perms.len() fits in u32.
            index: i as u32,
            next: u64::from(offset),
            skip: u64::from(skip),
            weight: u64::from(weight),
            credit: 0,
        })
        .collect();

    const EMPTY: u32 = u32::MAX;
    let m64 = u64::from(m);
    let max_weight = u64::from(max_weight);
    let mut entry = vec![EMPTY; m as usize];
    let mut filled: u64 = 0;
    'rounds: loop {
        for s in states.iter_mut() {
            s.credit += s.weight;
            while s.credit >= max_weight {
                s.credit -= max_weight;
                // m is prime and 1 <= skip < m, so the permutation visits
                // every slot and an empty one is found while filled < m.
                let mut c = s.next;
                while entry[c as usize] != EMPTY {
                    c += s.skip;
                    if c >= m64 {
                        c -= m64;
                    }
                }
                entry[c as usize] = s.index;
                c += s.skip;
                if c >= m64 {
                    c -= m64;
                }
                s.next = c;
                filled += 1;
                if filled == m64 {
                    break 'rounds;
                }
            }
        }
    }
    Ok(entry)
}

/// A populated Maglev lookup table.
///
/// Built from backends by name: the order of the input does not matter
/// (backends are sorted by name internally).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    m: u32,
    backends: Vec<Backend>,
    /// Owner index into `backends` for every slot; empty if no backend has
    /// a non-zero weight.
    entry: Vec<u32>,
}

impl Table {
    /// Build a table of size `m` from `backends` (in any order).
    ///
    /// # Errors
    ///
    /// [`MaglevError::NotPrime`] if `m` is not prime,
    /// [`MaglevError::TooSmall`] if `m` is less than the number of backends
    /// with a non-zero weight, [`MaglevError::DuplicateName`] if two backends
    /// share a name.
    pub fn build(backends: &[Backend], m: u32) -> Result<Table, MaglevError> {
        if !is_prime(m) {
            return Err(MaglevError::NotPrime { size: m });
        }
        let mut sorted: Vec<Backend> = backends.to_vec();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = sorted.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(MaglevError::DuplicateName(w[0].name.clone()));
        }
        let weighted = sorted.iter().filter(|b| b.weight > 0).count();
        if (m as usize) < weighted {
            return Err(MaglevError::TooSmall {
                size: m,
                backends: weighted,
            });
        }
        let perms: Vec<(u32, u32, u32)> = sorted
            .iter()
            .map(|b| {
                let (offset, skip) = permutation(&b.name, m);
                (offset, skip, b.weight)
            })
            .collect();
        let entry = populate(&perms, m)?;
        Ok(Table {
            m,
            backends: sorted,
            entry,
        })
    }

    /// The table size `M`.
    pub fn size(&self) -> u32 {
        self.m
    }

    /// Whether no slot has an owner (no backend has a non-zero weight).
    pub fn is_empty(&self) -> bool {
        self.entry.is_empty()
    }

    /// The backend name owning slot `hash % M`; `None` if the table is empty.
    pub fn lookup(&self, hash: u64) -> Option<&str> {
        self.lookup_index(hash)
            .and_then(|i| self.backends.get(i))
            .map(|b| b.name.as_str())
    }

    /// Index into [`Table::backends`] of the backend owning slot `hash % M`;
    /// `None` if the table is empty.
    pub fn lookup_index(&self, hash: u64) -> Option<usize> {
        if self.entry.is_empty() {
            return None;
        }
        let slot = hash % u64::from(self.m);
        self.entry.get(slot as usize).map(|&i| i as usize)
    }

    /// The backends, sorted by name (including weight-0 ones).
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Owner index of slot `slot`, if the slot exists and has an owner.
    pub fn slot_index(&self, slot: u32) -> Option<usize> {
        self.entry.get(slot as usize).map(|&i| i as usize)
    }

    /// Owner name of slot `slot`, if the slot exists and has an owner.
    pub fn slot_owner(&self, slot: u32) -> Option<&str> {
        self.slot_index(slot)
            .and_then(|i| self.backends.get(i))
            .map(|b| b.name.as_str())
    }

    /// The owner name of every slot `0..M` in order (all `None` if the table
    /// is empty).
    pub fn slots(&self) -> impl Iterator<Item = Option<&str>> {
        (0..self.m).map(move |s| self.slot_owner(s))
    }

    /// Slot indices whose owner *name* differs between `self` and `newer`.
    ///
    /// Both tables should have the same size; if the sizes differ, the slot
    /// numbering is unrelated and every slot of `newer` is reported.
    pub fn changed_slots(&self, newer: &Table) -> Vec<u32> {
        if self.m != newer.m {
            return (0..newer.m).collect();
        }
        (0..self.m)
            .filter(|&s| self.slot_owner(s) != newer.slot_owner(s))
            .collect()
    }

    /// Number of slots owned by each backend, in [`Table::backends`] order.
    pub fn share(&self) -> Vec<(String, usize)> {
        let mut counts = vec![0usize; self.backends.len()];
        for &i in &self.entry {
            if let Some(c) = counts.get_mut(i as usize) {
                *c += 1;
            }
        }
        self.backends
            .iter()
            .zip(counts)
            .map(|(b, c)| (b.name.clone(), c))
            .collect()
    }
}

#[cfg(test)]
mod tests;
