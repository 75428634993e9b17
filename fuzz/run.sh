#!/usr/bin/env bash
# Builds every fuzz target, then runs each for a bounded time; fails if any target finds a crash
# (a panic, an overflow, a failed assertion, a timeout or an out-of-memory).
#
#   fuzz/run.sh            # 30 s per target (what CI runs)
#   fuzz/run.sh 300        # 5 min per target
#   FUZZ_SECONDS=60 fuzz/run.sh
#   FUZZ_TARGETS="authz route_match" fuzz/run.sh 120
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`). Built without
# a sanitizer but with debug assertions and overflow checks (docs/reliability.md says why).
# libFuzzer writes new inputs into the first corpus directory it is given: that is a temporary
# one, so a run never modifies the committed corpus in fuzz/corpus/. A crashing input is saved
# in fuzz/artifacts/<target>/; reproduce it from fuzz/ with
#   cargo +nightly fuzz run -O -a -s none <target> artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-${FUZZ_SECONDS:-30}}"
flags=(-O -a -s none)

# The lock file is committed: refuse to resolve anything new. A dependency added to the proxy,
# the control plane or the api crate needs fuzz/Cargo.lock updated too.
if ! cargo +nightly fetch --locked --quiet; then
  echo "fuzz/Cargo.lock is out of date: run 'cargo +nightly fetch' in fuzz/ and commit it" >&2
  exit 1
fi
echo "== fuzz: build"
start=$(date +%s)
cargo +nightly fuzz build "${flags[@]}"
echo "== fuzz: built in $(($(date +%s) - start)) s"

bin="${CARGO_TARGET_DIR:-target}/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"
read -r -a targets <<<"${FUZZ_TARGETS:-$(cargo +nightly fuzz list | tr '\n' ' ')}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

failed=()
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "$scratch/$target"
  log="$scratch/$target.log"
  mkdir -p "artifacts/$target"
  # The binary just built, run directly: `cargo fuzz run` would rebuild first if a source changed.
  dict=()
  if [ -f "dict/$target.dict" ]; then dict=(-dict="dict/$target.dict"); fi
  if "$bin/$target" "$scratch/$target" "corpus/$target" -artifact_prefix="artifacts/$target/" "${dict[@]}" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cover=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    echo "== fuzz: $target ok: ${runs:-?} runs in $seconds s, $cover"
  else
    echo "== fuzz: $target FAILED"
    grep -m1 -A3 'panicked at' "$log" || true
    tail -n 12 "$log"
    failed+=("$target")
  fi
done

passed=$((${#targets[@]} - ${#failed[@]}))
if [ "${#failed[@]}" -gt 0 ]; then
  echo "== fuzz: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)"
fi
echo "fuzz: $passed passed, ${#failed[@]} failed"
[ "${#failed[@]}" -eq 0 ]
