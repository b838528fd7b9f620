use super::*;

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
fn device_storage_queues_every_owner_change_for_the_device_to_zero() {
    // The CUDA arena is zeroed by the engine from this list before the new
    // owner's next step; the same rule as the host zeroing above.
    let mut p = KvPool::with_storage(shape(2), KvQuota::UNLIMITED, false);
    assert!(!p.has_host_storage());
    let (a, b) = (t("a"), t("b"));
    let blk = p.allocate(&a, 2).unwrap();
    assert!(p.take_scrub_list().is_empty(), "fresh blocks had no owner");
    p.free(&a, &blk);
    let again = p.allocate(&a, 1).unwrap();
    assert!(
        p.take_scrub_list().is_empty(),
        "same tenant: nothing to zero"
    );
    p.free(&a, &again);
    let mut other = p.allocate(&b, 2).unwrap();
    let mut queued = p.take_scrub_list();
    queued.sort();
    other.sort();
    assert_eq!(queued, other, "both of a's blocks must be zeroed for b");
    assert_eq!(p.scrubbed_blocks(), 2);
    assert!(p.take_scrub_list().is_empty(), "taken once");
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

fn q(guaranteed: usize, burst: usize) -> KvQuota {
    KvQuota { guaranteed, burst }
}

fn hashes(tenant: &str, tokens: &[u32]) -> Vec<BlockHash> {
    PrefixSecret::from_bytes([7; 32])
        .tenant_salt(tenant)
        .block_hashes(tokens, 4)
}

#[test]
fn by_default_a_tenant_that_fills_the_pool_leaves_the_next_its_fair_share() {
    // 16 blocks, up to 4 sequences: each active tenant is guaranteed 4.
    let quota = KvQuota::fair_share(16, 4, 16);
    assert_eq!(quota, q(4, 16));
    let mut p = KvPool::with_quota(shape(16), quota);
    let (a, b) = (t("a"), t("b"));
    let first = p.allocate(&b, 1).unwrap(); // b is active
    // a takes all it can: the pool keeps b's remaining guarantee free.
    let mut took = 0;
    while p.allocate(&a, 1).is_ok() {
        took += 1;
    }
    assert_eq!(took, 16 - 4);
    let rest = p.allocate(&b, 3).expect("b's guarantee stays available");
    assert_eq!(p.used_by("b"), 4);
    p.free(&b, &first);
    p.free(&b, &rest);
    p.audit().unwrap();
    // With no guarantee (the old default) a would have taken everything.
    let mut p = KvPool::with_quota(shape(16), q(0, 16));
    p.allocate(&b, 1).unwrap();
    assert!(p.allocate(&a, 15).is_ok());
    assert!(p.allocate(&b, 1).is_err());
}

#[test]
fn burst_is_a_hard_cap_with_a_clear_error() {
    let mut p = KvPool::with_quota(shape(16), q(2, 5));
    let a = t("a");
    let blocks = p.allocate(&a, 4).unwrap();
    let err = p.allocate(&a, 2).unwrap_err();
    assert!(matches!(
        err,
        KvError::QuotaExceeded {
            requested: 2,
            in_use: 4,
            max: 5,
            ..
        }
    ));
    assert!(err.to_string().contains("over its KV quota"), "{err}");
    // Refused even though the pool has plenty free: nothing changed.
    assert_eq!(p.free_blocks(), 12);
    assert_eq!(p.used_by("a"), 4);
    p.allocate(&a, 1).unwrap();
    p.free(&a, &blocks);
    p.audit().unwrap();
}

#[test]
fn free_blocks_reserved_for_other_active_tenants_guarantee() {
    // 10 blocks, guarantee 4, burst 10.
    let mut p = KvPool::with_quota(shape(10), q(4, 10));
    let (a, b) = (t("a"), t("b"));
    p.allocate(&b, 1).unwrap(); // b active with deficit 3
    assert_eq!(p.reserved_for_others("a"), 3);
    // a may take 9 - 3 = 6 free blocks, not 7.
    assert!(matches!(
        p.allocate(&a, 7),
        Err(KvError::OutOfBlocks { .. })
    ));
    p.allocate(&a, 6).unwrap();
    // b can still reach its guarantee.
    p.allocate(&b, 3).unwrap();
    assert_eq!(p.free_blocks(), 0);
    p.audit().unwrap();
}

#[test]
fn prefix_reuse_is_same_tenant_only_and_refcounted() {
    let mut p = KvPool::new(shape(16));
    let (a, b) = (t("a"), t("b"));
    let toks: Vec<u32> = (0..10).collect();
    let (ha, hb) = (hashes("a", &toks), hashes("b", &toks));
    let blocks = p.allocate(&a, 3).unwrap();
    fill(&mut p, blocks[0], 5.0);
    assert!(p.register("a", blocks[0], ha[0]));
    assert!(p.register("a", blocks[1], ha[1]));
    assert!(
        !p.register("b", blocks[2], hb[0]),
        "b cannot register a's block"
    );
    assert!(!p.register("a", blocks[2], ha[0]), "hash already cached");
    // Identical prompt, other tenant: nothing to reuse.
    assert_eq!(p.lookup_prefix("b", &hb), 0);
    assert_eq!(
        p.lookup_prefix("b", &ha),
        0,
        "even a's own keys do not resolve for b"
    );
    assert!(p.acquire_prefix(&b, &hb).is_empty());
    // Same tenant: shared while the first sequence still runs.
    let shared = p.acquire_prefix(&a, &ha);
    assert_eq!(shared, blocks[..2]);
    assert_eq!(
        p.state(blocks[0]),
        Some(BlockState::InUse { owner: &a, refs: 2 })
    );
    p.free(&a, &blocks);
    assert_eq!(p.free_blocks(), 16 - 2);
    p.free(&a, &shared);
    assert_eq!(p.cached_blocks(), 2);
    assert_eq!(p.used_by("a"), 2);
    p.audit().unwrap();
    // Cached: reused later with its content intact.
    let again = p.acquire_prefix(&a, &ha[..1]);
    assert_eq!(again, vec![blocks[0]]);
    assert!(!p.block_is_zero(blocks[0]));
    p.free(&a, &again);
    assert_eq!(p.cache_hit_blocks(), 3);
}

#[test]
fn cached_blocks_expire_by_when_they_were_cached() {
    let mut p = KvPool::new(shape(16));
    let a = t("a");
    let toks: Vec<u32> = (0..10).collect();
    let h = hashes("a", &toks);
    let first = p.allocate(&a, 1).unwrap();
    assert!(p.register("a", first[0], h[0]));
    p.free(&a, &first);
    let mark = p.lru_clock();
    let second = p.allocate(&a, 1).unwrap();
    assert!(p.register("a", second[0], h[1]));
    p.free(&a, &second);
    assert_eq!(p.cached_blocks(), 2);
    // Everything cached up to the mark goes; what came after stays.
    assert_eq!(p.evict_cached_up_to(mark), 1);
    assert_eq!(p.cached_blocks(), 1);
    assert_eq!(p.lookup_prefix("a", &h[..1]), 0, "the expired prefix hit");
    assert_eq!(p.free_blocks(), 15);
    // A block in use is never expired, only unreferenced cached ones.
    let held = p.acquire_prefix(&a, &h[1..2]);
    assert_eq!(p.evict_cached_up_to(u64::MAX), 0);
    p.free(&a, &held);
    assert_eq!(p.evict_cached_up_to(u64::MAX), 1);
    p.audit().unwrap();
}

#[test]
fn eviction_order_own_lru_then_tenants_above_guarantee() {
    let mut p = KvPool::with_quota(shape(9), q(2, 9));
    let (a, b, c) = (t("a"), t("b"), t("c"));
    let toks: Vec<u32> = (0..32).collect();
    let cache = |p: &mut KvPool, who: &TenantId, n: usize| {
        let hs = hashes(who, &toks);
        let bs = p.allocate(who, n).unwrap();
        for (blk, h) in bs.iter().zip(&hs) {
            fill(p, *blk, 1.0);
            assert!(p.register(who, *blk, *h));
        }
        p.free(who, &bs);
        bs
    };
    let b_cached = cache(&mut p, &b, 3);
    let a_cached = cache(&mut p, &a, 2);
    let c_cached = cache(&mut p, &c, 2);
    // b and c stay active with one block in use each (b: 4 held > 2; c: 3 > 2).
    let b_run = p.allocate(&b, 1).unwrap();
    let c_run = p.allocate(&c, 1).unwrap();
    assert_eq!(p.free_blocks(), 0);
    // a needs 3: its own 2 cached blocks (LRU) first, then b's oldest cached.
    let got = p.allocate(&a, 3).unwrap();
    assert_eq!(got[..2], a_cached[..]);
    assert_eq!(got[2], b_cached[0]);
    assert!(p.block_is_zero(b_cached[0]), "re-owned block zeroed");
    assert!(!p.block_is_zero(a_cached[0]), "own block not scrubbed");
    // Next: b's second cached block (b holds 3 > 2), then c (3 > 2), then nothing:
    // both are at their guarantee.
    let more = p.allocate(&a, 2).unwrap();
    assert_eq!(more, vec![b_cached[1], c_cached[0]]);
    assert!(matches!(
        p.allocate(&a, 1),
        Err(KvError::OutOfBlocks { .. })
    ));
    assert_eq!(p.used_by("b"), 2);
    assert_eq!(p.used_by("c"), 2);
    // Once b is idle, its cache is fair game (after the block b freed).
    p.free(&b, &b_run);
    assert_eq!(p.allocate(&a, 2).unwrap(), vec![b_run[0], b_cached[2]]);
    p.free(&c, &c_run);
    assert_eq!(p.evicted_blocks(), 6);
    p.audit().unwrap();
}

#[test]
fn burst_reclaims_own_cache_first() {
    let mut p = KvPool::with_quota(shape(8), q(0, 3));
    let a = t("a");
    let hs = hashes("a", &(0..12).collect::<Vec<_>>());
    let bs = p.allocate(&a, 3).unwrap();
    for (b, h) in bs.iter().zip(&hs) {
        p.register("a", *b, *h);
    }
    p.free(&a, &bs);
    assert_eq!(p.cached_by("a"), 3);
    // Plenty free, but a may hold at most 3: its own cached blocks go.
    let got = p.allocate(&a, 2).unwrap();
    assert_eq!(got, bs[..2]);
    assert_eq!(p.used_by("a"), 3);
    assert_eq!(p.evict_cached(5), 1);
    p.audit().unwrap();
}

#[test]
fn fork_shares_only_blocks_in_use_by_the_same_tenant() {
    let mut p = KvPool::new(shape(4));
    let (a, b) = (t("a"), t("b"));
    let ba = p.allocate(&a, 2).unwrap();
    assert!(p.fork("b", &ba).is_err());
    p.fork("a", &ba).unwrap();
    p.free(&a, &ba);
    assert_eq!(p.used_by("a"), 2);
    p.free(&a, &ba);
    assert_eq!(p.free_blocks(), 4);
    let _ = b;
    p.audit().unwrap();
}

#[test]
fn released_or_expired_blocks_of_a_tenant_can_be_zeroed_at_once() {
    let mut p = KvPool::new(shape(8));
    let (a, b) = (t("a"), t("b"));
    // Released by a tenant without prefix cache: zeroed now, not at the
    // next owner's allocation.
    let blocks = p.allocate(&a, 2).unwrap();
    fill(&mut p, blocks[0], 3.0);
    fill(&mut p, blocks[1], 3.0);
    assert_eq!(p.free_scrubbed(&a, &blocks), 0);
    assert!(blocks.iter().all(|&x| p.block_is_zero(x)));
    assert_eq!(p.scrubbed_blocks(), 2);
    // Handed out again (even to another tenant) they are not zeroed twice.
    let again = p.allocate(&b, 2).unwrap();
    assert_eq!(p.scrubbed_blocks(), 2);
    p.free(&b, &again);
    // A tenant's own TTL evicts only its cached blocks, zeroed.
    let toks: Vec<u32> = (0..8).collect();
    let (ha, hb) = (hashes("a", &toks), hashes("b", &toks));
    let xa = p.allocate(&a, 1).unwrap();
    let xb = p.allocate(&b, 1).unwrap();
    fill(&mut p, xa[0], 1.0);
    fill(&mut p, xb[0], 2.0);
    assert!(p.register("a", xa[0], ha[0]) && p.register("b", xb[0], hb[0]));
    p.free(&a, &xa);
    p.free(&b, &xb);
    assert_eq!(p.evict_cached_of_up_to("a", u64::MAX), 1);
    assert!(p.block_is_zero(xa[0]));
    assert_eq!(p.cached_by("a"), 0);
    assert_eq!(p.cached_by("b"), 1);
    assert!(
        !p.block_is_zero(xb[0]),
        "another tenant's cache was touched"
    );
    // Up to a stamp only: a later cached block stays.
    let mark = p.lru_clock();
    let ya = p.allocate(&a, 1).unwrap();
    assert!(p.register("a", ya[0], ha[1]));
    p.free(&a, &ya);
    assert_eq!(p.evict_cached_of_up_to("a", mark), 0);
    assert_eq!(p.cached_by("a"), 1);
    p.audit().unwrap();
}
