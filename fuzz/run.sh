#!/usr/bin/env bash
# Runs every fuzz target for a bounded time over the committed corpus; exits non-zero when one
# crashes (the input is then in fuzz/artifacts/TARGET/). See fuzz/README.md.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     default 60 seconds, every target
#
# Choices, for a shared two-core machine and a stable toolchain:
# - RUSTC_BOOTSTRAP=1 lets stable rustc take the nightly-only flags cargo-fuzz passes
#   (-Zsanitizer, sancov), so no nightly toolchain is needed.
# - --sanitizer none: the code under test is safe Rust (serde_json, serde-saphyr, minijinja,
#   jsonpath-rust), where a bug shows as a panic, which libFuzzer catches without ASan;
#   AddressSanitizer would double the build time and halve the executions per second.
# - Debug assertions and overflow checks stay on (cargo-fuzz's default without -O), so an
#   arithmetic overflow is a crash here even though release builds would wrap.
# - -rss_limit_mb and -timeout turn a runaway allocation or a hang on one input into a
#   crash too: a spec or a delivery must not be able to stall `validate` or `serve`.
# New inputs that reach new code are added to fuzz/corpus/TARGET/; minimise before committing
# them (`cargo fuzz cmin TARGET`, see README.md).
set -euo pipefail

seconds=${1:-60}
shift || true
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(delivery spec settings signature)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    nice cargo install cargo-fuzz --locked
fi

build=(--sanitizer none)
failed=()
for target in "${targets[@]}"; do
    nice cargo fuzz build "${build[@]}" "$target"
    mkdir -p "corpus/$target"
    echo "fuzz: $target for ${seconds}s" >&2
    if ! nice cargo fuzz run "${build[@]}" "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        failed+=("$target")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: no crash in ${targets[*]}" >&2
