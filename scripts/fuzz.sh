#!/usr/bin/env bash
# Build and run every cargo-fuzz target for N seconds each (default 60) and
# print executions and findings per target.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]
#
# cargo-fuzz needs nightly flags; only stable is installed, so the build runs
# with RUSTC_BOOTSTRAP=1. cargo-fuzz itself is installed from crates.io into
# .bulkhead/cargo-bin. Builds go to fuzz/target (not the workspace target/).
# Findings land in fuzz/artifacts/<target>/; `cargo test -p bulkhead-router
# --test fuzz_corpus` / `-p bulkhead-worker --test fuzz_corpus` replay them.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-60}"
shift || true

bin_root="$root/.bulkhead/cargo-bin"
if [[ ! -x "$bin_root/bin/cargo-fuzz" ]]; then
    echo "== installing cargo-fuzz into $bin_root"
    cargo install cargo-fuzz --locked --root "$bin_root"
fi
export PATH="$bin_root/bin:$PATH"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$root/fuzz/target"

cd "$root/fuzz"
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# Optimized with debug assertions and overflow checks (cargo-fuzz's
# default); no sanitizer: the project's crates forbid unsafe code, and
# without ASan two cores run several times more executions.
flags=(-s none)
echo "== building"
cargo fuzz build "${flags[@]}"

summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    # Work corpus: seeds stay small in git; new inputs go to target/corpus.
    work="target/corpus/$t"
    mkdir -p "$work"
    log="target/fuzz-$t.log"
    before=$(find "artifacts/$t" -type f | wc -l)
    echo "== $t: ${secs}s"
    start=$(date +%s)
    set +e
    cargo fuzz run "${flags[@]}" "$t" "$work" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=8192 -timeout=10 -rss_limit_mb=4096 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    # libFuzzer's own count when it finished; else wall time (incl. build).
    took=$(sed -nE 's/^Done [0-9]+ runs in ([0-9]+) second.*/\1/p' "$log" | tail -1)
    took=${took:-$(($(date +%s) - start))}
    execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -1)
    after=$(find "artifacts/$t" -type f | wc -l)
    line="$t: ran ${took}s (limit ${secs}s), executions=${execs:-?}, exit=$rc, new findings=$((after - before))"
    echo "$line"
    if [[ $rc -ne 0 ]]; then
        grep -E -A1 'ERROR|panicked|SUMMARY|Test unit written' "$log" | head -20 || true
        echo "(reproduce: cargo fuzz run ${flags[*]} $t <artifact>; save a minimized copy in"
        echo " fuzz/corpus/$t/regress-*.  The fuzz_corpus tests replay corpus and artifacts.)"
    fi
    summary+=("$line")
done

echo "== summary"
printf '%s\n' "${summary[@]}"
