use super::*;
use proptest::prelude::*;

fn shape(blocks: usize) -> KvShape {
    KvShape {
        num_layers: 2,
        num_blocks: blocks,
        block_size: 4,
        num_kv_heads: 2,
        head_dim: 3,
    }
}

fn t(s: &str) -> TenantId {
    Arc::from(s)
}

fn fill(pool: &mut KvPool, b: BlockId, val: f32) {
    let s = pool.shape();
    let k = vec![val; s.slot_len()];
    for l in 0..s.num_layers {
        for o in 0..s.block_size {
            pool.write(l, b, o, &k, &k);
        }
    }
}

#[test]
fn allocate_and_free_counts() {
    let mut p = KvPool::new(shape(8));
    let a = t("a");
    let blocks = p.allocate(&a, 3).unwrap();
    assert_eq!(blocks.len(), 3);
    assert_eq!(p.free_blocks(), 5);
    assert_eq!(p.used_by("a"), 3);
    assert_eq!(p.free(&a, &blocks), 0);
    assert_eq!(p.free_blocks(), 8);
    assert_eq!(p.used_by("a"), 0);
}

#[test]
fn out_of_blocks_is_an_error_and_allocates_nothing() {
    let mut p = KvPool::new(shape(4));
    let err = p.allocate(&t("a"), 5).unwrap_err();
    assert_eq!(
        err,
        KvError::OutOfBlocks {
            requested: 5,
            free: 4,
            total: 4
        }
    );
    assert_eq!(p.free_blocks(), 4);
    assert!(err.to_string().contains("out of KV blocks"));
}

#[test]
fn reassigned_block_is_zeroed_but_same_tenant_reuse_is_not() {
    let mut p = KvPool::new(shape(1));
    let (a, b) = (t("a"), t("b"));
    let blk = p.allocate(&a, 1).unwrap();
    fill(&mut p, blk[0], 7.0);
    p.free(&a, &blk);
    // Same tenant: no scrub needed (it is its own data).
    let again = p.allocate(&a, 1).unwrap();
    assert!(!p.block_is_zero(again[0]));
    assert_eq!(p.scrubbed_blocks(), 0);
    p.free(&a, &again);
    let other = p.allocate(&b, 1).unwrap();
    assert_eq!(other, blk);
    assert!(p.block_is_zero(other[0]));
    assert_eq!(p.scrubbed_blocks(), 1);
}

#[test]
fn guard_fires_on_foreign_block_and_counts() {
    let mut p = KvPool::new(shape(4));
    let (a, b) = (t("a"), t("b"));
    let ba = p.allocate(&a, 2).unwrap();
    let bb = p.allocate(&b, 1).unwrap();
    assert!(p.check_table("a", &ba).is_ok());
    let mut table = ba.clone();
    table.push(bb[0]);
    let err = p.check_table("a", &table).unwrap_err();
    assert_eq!(
        err,
        KvError::GuardViolation {
            block: bb[0],
            tenant: "a".into()
        }
    );
    assert_eq!(p.guard_violations(), 1);
    // A free block and an out-of-range block are violations too.
    p.free(&b, &bb);
    assert!(p.check_table("a", &bb).is_err());
    assert!(p.check_table("a", &[999]).is_err());
    assert_eq!(p.guard_violations(), 3);
}

#[test]
fn free_ignores_blocks_of_other_tenants() {
    let mut p = KvPool::new(shape(2));
    let (a, b) = (t("a"), t("b"));
    let ba = p.allocate(&a, 1).unwrap();
    assert_eq!(p.free(&b, &ba), 1);
    assert_eq!(p.owner(ba[0]).map(|o| &**o), Some("a"));
}

#[derive(Debug, Clone)]
enum Op {
    Alloc(usize, usize),
    Free(usize, usize),
    Check(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 1..4usize).prop_map(|(t, n)| Op::Alloc(t, n)),
        (0..3usize, 0..8usize).prop_map(|(t, i)| Op::Free(t, i)),
        (0..3usize, 0..3usize).prop_map(|(t, o)| Op::Check(t, o)),
    ]
}

proptest! {
    #[test]
    fn pool_invariants(ops in proptest::collection::vec(op(), 1..60)) {
        let tenants = [t("t0"), t("t1"), t("t2")];
        let mut p = KvPool::new(shape(10));
        // What each tenant holds, as the test tracks it.
        let mut held: Vec<Vec<BlockId>> = vec![vec![]; 3];
        let mut last: Vec<Option<usize>> = vec![None; 10];
        for op in ops {
            match op {
                Op::Alloc(ti, n) => {
                    let free_before = p.free_blocks();
                    match p.allocate(&tenants[ti], n) {
                        Ok(bs) => {
                            for &b in &bs {
                                if last[b as usize].is_some_and(|l| l != ti) {
                                    prop_assert!(p.block_is_zero(b), "re-owned block not zeroed");
                                }
                                last[b as usize] = Some(ti);
                                // Write this tenant's marker into the block.
                                fill(&mut p, b, (ti + 1) as f32);
                            }
                            held[ti].extend(bs);
                        }
                        Err(KvError::OutOfBlocks { .. }) => prop_assert!(n > free_before),
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
                Op::Free(ti, i) => {
                    if !held[ti].is_empty() {
                        let idx = i % held[ti].len();
                        let b = held[ti].remove(idx);
                        prop_assert_eq!(p.free(&tenants[ti], &[b]), 0);
                    }
                }
                Op::Check(ti, other) => {
                    prop_assert!(p.check_table(&tenants[ti], &held[ti]).is_ok());
                    if other != ti && !held[other].is_empty() {
                        let mut table = held[ti].clone();
                        table.push(held[other][0]);
                        let before = p.guard_violations();
                        prop_assert!(p.check_table(&tenants[ti], &table).is_err());
                        prop_assert_eq!(p.guard_violations(), before + 1);
                    }
                }
            }
            // No block owned twice; free + used = total; per-tenant counts agree.
            let mut seen = std::collections::HashSet::new();
            for (ti, bs) in held.iter().enumerate() {
                for &b in bs {
                    prop_assert!(seen.insert(b), "block {} owned twice", b);
                    prop_assert_eq!(p.owner(b).map(|o| &**o), Some(&*tenants[ti]));
                }
                prop_assert_eq!(p.used_by(&tenants[ti]), bs.len());
            }
            prop_assert_eq!(p.free_blocks() + seen.len(), p.total_blocks());
        }
    }
}
