use super::*;
use proptest::prelude::*;

fn backends(n: usize, weight: u32) -> Vec<Backend> {
    (0..n)
        .map(|i| Backend::new(format!("backend-{i}"), weight))
        .collect()
}

/// xxh64 (seed 0) of the slot -> owner name sequence, each name followed by a
/// NUL byte (an empty slot contributes just the NUL).
fn fingerprint(t: &Table) -> u64 {
    let mut buf = Vec::new();
    for owner in t.slots() {
        buf.extend_from_slice(owner.unwrap_or("").as_bytes());
        buf.push(0);
    }
    xxhash_rust::xxh64::xxh64(&buf, 0)
}

#[test]
fn paper_example() {
    // Table 1 of the paper: M = 7.
    let b0 = (3, 4, 1);
    let b1 = (0, 2, 1);
    let b2 = (3, 1, 1);
    let t = populate(&[b0, b1, b2], 7).unwrap();
    assert_eq!(t, vec![1, 0, 1, 0, 2, 2, 0]);
    // B1 removed: indices now refer to [B0, B2].
    let t = populate(&[b0, b2], 7).unwrap();
    assert_eq!(t, vec![0, 0, 0, 0, 1, 1, 1]);
}

#[test]
fn populate_weight_zero_and_empty() {
    assert_eq!(populate(&[], 7).unwrap(), Vec::<u32>::new());
    assert_eq!(
        populate(&[(3, 4, 0), (0, 2, 0)], 7).unwrap(),
        Vec::<u32>::new()
    );
    // A weight-0 backend takes no slots; the rest is as if it were absent.
    let t = populate(&[(3, 4, 1), (0, 2, 0), (3, 1, 1)], 7).unwrap();
    assert_eq!(t, vec![0, 0, 0, 0, 2, 2, 2]);
}

#[test]
fn populate_rejects_bad_params() {
    assert_eq!(
        populate(&[(0, 1, 1)], 8),
        Err(MaglevError::NotPrime { size: 8 })
    );
    assert!(matches!(
        populate(&[(7, 1, 1)], 7),
        Err(MaglevError::InvalidPermutation { index: 0, .. })
    ));
    assert!(matches!(
        populate(&[(0, 1, 1), (0, 0, 1)], 7),
        Err(MaglevError::InvalidPermutation { index: 1, .. })
    ));
    assert!(matches!(
        populate(&[(0, 7, 1)], 7),
        Err(MaglevError::InvalidPermutation { .. })
    ));
}

#[test]
fn primes() {
    let small: Vec<u32> = (0..50).filter(|&n| is_prime(n)).collect();
    assert_eq!(
        small,
        vec![2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47]
    );
    for p in [5003, 10007, 65_537, 4_294_967_291] {
        assert!(is_prime(p), "{p}");
    }
    for c in [5001, 65_535, 4_294_967_295, 65_537 * 65_521] {
        assert!(!is_prime(c), "{c}");
    }
}

#[test]
fn permutation_golden() {
    // Pinned values of hash version 1. If this fails, the hash changed:
    // bump HASH_VERSION and update deliberately.
    assert_eq!(HASH_VERSION, 1);
    let got: Vec<(u32, u32)> = ["backend-0", "backend-1", "10.0.0.1:80", ""]
        .iter()
        .map(|n| permutation(n, DEFAULT_TABLE_SIZE))
        .collect();
    assert_eq!(got, GOLDEN_PERMS);
    assert_eq!(permutation("x", 7), GOLDEN_PERM_X7);
    assert_eq!(permutation("x", 1), (0, 1));
    assert_eq!(permutation("x", 0), (0, 1));
}

const GOLDEN_PERMS: [(u32, u32); 4] =
    [(38926, 853), (23210, 20127), (43955, 43639), (33713, 39313)];
const GOLDEN_PERM_X7: (u32, u32) = (3, 2);
const GOLDEN_FINGERPRINT: u64 = 0x2be0_0272_7b2f_8a8d;

#[test]
fn table_golden() {
    let t = Table::build(&backends(10, 1), DEFAULT_TABLE_SIZE).unwrap();
    assert_eq!(fingerprint(&t), GOLDEN_FINGERPRINT);
}

#[test]
fn input_order_independent() {
    let mut bs = vec![
        Backend::new("c", 2),
        Backend::new("a", 1),
        Backend::new("d", 0),
        Backend::new("b", 3),
    ];
    let t1 = Table::build(&bs, 5003).unwrap();
    bs.reverse();
    let t2 = Table::build(&bs, 5003).unwrap();
    bs.swap(0, 2);
    let t3 = Table::build(&bs, 5003).unwrap();
    assert_eq!(t1, t2);
    assert_eq!(t1, t3);
    assert!(t1.changed_slots(&t2).is_empty());
    let names: Vec<&str> = t1.backends().iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
}

#[test]
fn errors() {
    assert_eq!(
        Table::build(&backends(3, 1), 65_536).unwrap_err(),
        MaglevError::NotPrime { size: 65_536 }
    );
    assert_eq!(
        Table::build(&backends(3, 1), 1).unwrap_err(),
        MaglevError::NotPrime { size: 1 }
    );
    assert_eq!(
        Table::build(&backends(8, 1), 7).unwrap_err(),
        MaglevError::TooSmall {
            size: 7,
            backends: 8
        }
    );
    // Weight-0 backends do not count towards the minimum size.
    let mut bs = backends(7, 1);
    bs.push(Backend::new("idle", 0));
    assert!(Table::build(&bs, 7).is_ok());
    let bs = vec![
        Backend::new("a", 1),
        Backend::new("b", 1),
        Backend::new("a", 2),
    ];
    assert_eq!(
        Table::build(&bs, 7).unwrap_err(),
        MaglevError::DuplicateName("a".into())
    );
}

#[test]
fn empty_table() {
    let t = Table::build(&[], 7).unwrap();
    assert!(t.is_empty());
    assert_eq!(t.lookup(3), None);
    assert_eq!(t.lookup_index(3), None);
    assert_eq!(t.slots().count(), 7);
    assert!(t.slots().all(|s| s.is_none()));
    let t = Table::build(&[Backend::new("a", 0)], 7).unwrap();
    assert!(t.is_empty());
    assert_eq!(t.share(), vec![("a".to_string(), 0)]);
}

#[test]
fn lookup_and_share() {
    let t = Table::build(&backends(3, 1), 5003).unwrap();
    assert_eq!(t.size(), 5003);
    for h in [0u64, 1, 5002, 5003, u64::MAX] {
        let i = t.lookup_index(h).unwrap();
        assert_eq!(t.lookup(h), Some(t.backends()[i].name.as_str()));
        assert_eq!(t.slot_owner((h % 5003) as u32), t.lookup(h));
    }
    let share = t.share();
    assert_eq!(share.iter().map(|s| s.1).sum::<usize>(), 5003);
    for (_, c) in &share {
        assert!((1667..=1668).contains(c), "{share:?}");
    }
    // All slots of a removed backend are among the changed ones.
    let smaller = Table::build(&backends(3, 1)[..2], 5003).unwrap();
    let changed = t.changed_slots(&smaller);
    let owned: Vec<u32> = (0..5003)
        .filter(|&s| t.slot_owner(s) == Some("backend-2"))
        .collect();
    assert!(owned.iter().all(|s| changed.contains(s)));
    // Different sizes: everything reported.
    let other = Table::build(&backends(3, 1), 5009).unwrap();
    assert_eq!(t.changed_slots(&other).len(), 5009);
}

const SIZES: [u32; 3] = [5003, 10_007, 65_537];

/// Distinct random-ish backend names.
fn names(max: usize) -> impl Strategy<Value = Vec<String>> {
    proptest::collection::btree_set("[a-z0-9.:-]{1,16}", 2..=max)
        .prop_map(|s| s.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn prop_balance(names in names(50), size in proptest::sample::select(SIZES.to_vec())) {
        let bs: Vec<Backend> = names.iter().map(|n| Backend::new(n.clone(), 1)).collect();
        let t = Table::build(&bs, size).unwrap();
        let share = t.share();
        let max = share.iter().map(|s| s.1).max().unwrap() as f64;
        let mean = f64::from(size) / bs.len() as f64;
        prop_assert!(max / mean <= 1.01, "max {max} mean {mean}");
    }

    #[test]
    // Maglev's disruption is not perfectly minimal: a few slots of surviving
    // backends move too (an inherent property of the paper's algorithm,
    // see its figure 12; 2-5% of M at M = 5003 or 10007, so the bound is
    // checked at the default size). At M = 65537, over 2,800 random
    // removals with N from 3 to 50, the worst case was 1.8% of M (and
    // 1.6% with N = 3 in a CI run, kept in proptest-regressions), hence 3%;
    // a table that rehashed everything would move (N-1)/N of the slots.
    fn prop_minimal_disruption(
        names in names(50),
        victim in any::<prop::sample::Index>(),
    ) {
        let size = DEFAULT_TABLE_SIZE;
        let bs: Vec<Backend> = names.iter().map(|n| Backend::new(n.clone(), 1)).collect();
        let before = Table::build(&bs, size).unwrap();
        let removed = victim.index(bs.len());
        let mut fewer = bs.clone();
        let gone = fewer.remove(removed).name;
        let after = Table::build(&fewer, size).unwrap();
        let changed = before.changed_slots(&after);
        let owned = before.slots().filter(|o| *o == Some(gone.as_str())).count();
        let extra = changed
            .iter()
            .filter(|&&s| before.slot_owner(s) != Some(gone.as_str()))
            .count();
        // Every slot of the removed backend moves.
        prop_assert_eq!(changed.len() - extra, owned);
        prop_assert!(
            extra as f64 <= 0.03 * f64::from(size),
            "extra {} of {} (N = {})", extra, size, bs.len()
        );
    }

    #[test]
    fn prop_weights(
        names in names(20),
        size in proptest::sample::select(SIZES.to_vec()),
        weights in proptest::collection::vec(1u32..=4, 20),
    ) {
        let bs: Vec<Backend> = names
            .iter()
            .zip(&weights)
            .map(|(n, &w)| Backend::new(n.clone(), w))
            .collect();
        let total: u32 = bs.iter().map(|b| b.weight).sum();
        let t = Table::build(&bs, size).unwrap();
        for (b, (name, count)) in t.backends().iter().zip(t.share()) {
            prop_assert_eq!(&b.name, &name);
            let expected = f64::from(size) * f64::from(b.weight) / f64::from(total);
            prop_assert!(
                (count as f64 - expected).abs() <= 0.01 * f64::from(size),
                "{}: {} slots, expected {}", name, count, expected
            );
        }
    }

    #[test]
    fn prop_order_independent(names in names(20), seed in any::<u64>()) {
        let bs: Vec<Backend> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Backend::new(n.clone(), (i % 3) as u32))
            .collect();
        let mut shuffled = bs.clone();
        // Deterministic shuffle from the seed.
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        prop_assert_eq!(Table::build(&bs, 5003).unwrap(), Table::build(&shuffled, 5003).unwrap());
    }
}

#[test]
fn weights_one_and_three() {
    let bs = vec![Backend::new("light", 1), Backend::new("heavy", 3)];
    let t = Table::build(&bs, DEFAULT_TABLE_SIZE).unwrap();
    let share = t.share();
    let m = f64::from(DEFAULT_TABLE_SIZE);
    assert_eq!(share[0].0, "heavy");
    assert!(
        (share[0].1 as f64 - 0.75 * m).abs() <= 0.01 * m,
        "{share:?}"
    );
    assert!(
        (share[1].1 as f64 - 0.25 * m).abs() <= 0.01 * m,
        "{share:?}"
    );
}

#[test]
fn build_1000_backends() {
    let t = Table::build(&backends(1000, 1), DEFAULT_TABLE_SIZE).unwrap();
    let share = t.share();
    assert!(share.iter().all(|s| (65..=66).contains(&s.1)));
}
