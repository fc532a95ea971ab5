#!/usr/bin/env bash
# The performance benchmark of issue 5, from a clean checkout, in one go:
#   builds release, installs the Python baseline's pinned requirements (target/perf-venv),
#   generates the deliveries (cached in target/perf-data/), checks that marketsync, jq and
#   Python give the same requests, then times marketsync, jq, Python and the JSON floor on the
#   same data and prints a markdown table with the machine it ran on.
#
#   benches/perf/run.sh [--size 200MB] [--seed 42] [--runs 3] [--python-size 50MB]
#                       [--python-documented-size 5MB] [--memory-size 1GB]
#
# --size: input size (see generate.rs: MB = 10^6 bytes). --runs: timed rounds, each running
# every implementation once; medians are reported. --python-size: Python is slow, so it runs on
# the first part of the same data only (the generator's output for a smaller size is a prefix
# of the larger one) and its throughput is computed from that. Python runs twice: as
# jsonschema's docs first show it (jsonschema.validate per body, on --python-documented-size of
# data, since it is far slower) and with one compiled validator (--compiled-validator, on
# --python-size). --memory-size: the peak memory of marketsync is also measured, once per
# setting, on this much data (0 to skip).
set -euo pipefail

SIZE=200MB
SEED=42
RUNS=3
PY_SIZE=50MB
PYDOC_SIZE=5MB
MEM_SIZE=1GB
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --python-size) PY_SIZE=$2; shift 2 ;;
    --python-documented-size) PYDOC_SIZE=$2; shift 2 ;;
    --memory-size) MEM_SIZE=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/../.."
ROOT=$PWD
DATA_DIR=$ROOT/target/perf-data
OUT=$DATA_DIR/out
VENV=$ROOT/target/perf-venv
mkdir -p "$OUT"

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf '\nrun.sh: FAILED: %s\n' "$*" >&2; exit 1; }

# Sizes in bytes, as the generator reads them, so the Python subset is never larger than the data.
bytes_of() {
  local n=${1%%[!0-9.]*} unit=${1#"${1%%[!0-9.]*}"}
  case "${unit^^}" in
    ''|B) awk -v n="$n" 'BEGIN { printf "%d", n }' ;;
    KB) awk -v n="$n" 'BEGIN { printf "%d", n * 1e3 }' ;;
    MB) awk -v n="$n" 'BEGIN { printf "%d", n * 1e6 }' ;;
    GB) awk -v n="$n" 'BEGIN { printf "%d", n * 1e9 }' ;;
    KIB) awk -v n="$n" 'BEGIN { printf "%d", n * 1024 }' ;;
    MIB) awk -v n="$n" 'BEGIN { printf "%d", n * 1048576 }' ;;
    GIB) awk -v n="$n" 'BEGIN { printf "%d", n * 1073741824 }' ;;
    *) die "unknown size unit in $1" ;;
  esac
}
if [ "$(bytes_of "$PY_SIZE")" -gt "$(bytes_of "$SIZE")" ]; then PY_SIZE=$SIZE; fi
if [ "$(bytes_of "$PYDOC_SIZE")" -gt "$(bytes_of "$PY_SIZE")" ]; then PYDOC_SIZE=$PY_SIZE; fi

# --- tools ---------------------------------------------------------------------------------
say "tools"
command -v jq >/dev/null || die "jq is not installed (apt-get install jq)"
command -v python3 >/dev/null || die "python3 is not installed"
# GNU time gives the peak RSS; the shell's `time` keyword cannot.
if ! /usr/bin/time -f '%M' true >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq time >/dev/null
  fi
  /usr/bin/time -f '%M' true >/dev/null 2>&1 || die "GNU time (/usr/bin/time) is needed: apt-get install time"
fi
# Single-threaded runs are pinned to one CPU when taskset is there, so "one core" means one.
PIN=()
if command -v taskset >/dev/null && [ "$(nproc)" -gt 1 ]; then PIN=(taskset -c 1); fi

# --- build ---------------------------------------------------------------------------------
say "cargo build --release"
cargo build --release --locked --bin marketsync --example generate-deliveries --example json-floor
BIN=$ROOT/target/release/marketsync
GEN=$ROOT/target/release/examples/generate-deliveries
FLOOR=$ROOT/target/release/examples/json-floor

# --- Python baseline ------------------------------------------------------------------------
# Reinstalled when requirements.txt changes (its hash is kept beside the venv).
REQ=$ROOT/benches/perf/requirements.txt
REQ_HASH=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$REQ_HASH" ]; then
  say "python venv: $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
  echo "$REQ_HASH" > "$VENV/.requirements"
fi
PY=$VENV/bin/python

# --- data ----------------------------------------------------------------------------------
# Cached by seed and size; regenerated when the generator is newer than the file.
generate() { # size file
  if [ ! -s "$2" ] || [ "$ROOT/benches/perf/generate.rs" -nt "$2" ]; then
    say "generating $2"
    "$GEN" --seed "$SEED" --size "$1" --out "$2.tmp"
    mv "$2.tmp" "$2"
  fi
}
DATA=$DATA_DIR/deliveries-seed$SEED-$SIZE.ndjson
PY_DATA=$DATA_DIR/deliveries-seed$SEED-$PY_SIZE.ndjson
generate "$SIZE" "$DATA"
PYDOC_DATA=$DATA_DIR/deliveries-seed$SEED-$PYDOC_SIZE.ndjson
generate "$PY_SIZE" "$PY_DATA"
generate "$PYDOC_SIZE" "$PYDOC_DATA"
MEM_DATA=
if [ "$MEM_SIZE" != 0 ]; then
  MEM_DATA=$DATA_DIR/deliveries-seed$SEED-$MEM_SIZE.ndjson
  generate "$MEM_SIZE" "$MEM_DATA"
fi
for part in "$PY_DATA" "$PYDOC_DATA"; do
  cmp -s -n "$(stat -c %s "$part")" "$part" "$DATA" || die "$part is not a prefix of $DATA"
done

# The two mappings jq and Python implement, as marketsync loads a folder: the default specs
# themselves (symlinks) and an examples link, because specs name their examples as ../examples/.
MAPPINGS=$DATA_DIR/mappings
mkdir -p "$MAPPINGS"
for f in placed-order ordered-product settings; do ln -sfn "$ROOT/mappings/$f.yaml" "$MAPPINGS/$f.yaml"; done
ln -sfn "$ROOT/examples" "$DATA_DIR/examples"

# --- the implementations ---------------------------------------------------------------------
ms_two()  { "$BIN" run --dry-run --mappings "$MAPPINGS" "$@"; }   # placed-order + ordered-product
ms_all()  { "$BIN" run --dry-run "$@"; }                          # all default mappings
jq_impl() { jq -nc -f "$ROOT/benches/perf/placed_order.jq" "$@"; }
py_impl() { "$PY" "$ROOT/benches/perf/placed_order.py" "$@"; }

# --- agreement ------------------------------------------------------------------------------
say "checking that marketsync, jq and Python agree"
rejected() { awk '$1 == "rejected" { print $2 }' "$1"; }
ms_two "$DATA" > "$OUT/marketsync.ndjson" 2> "$OUT/marketsync.log" || true
[ "$(rejected "$OUT/marketsync.log")" = 0 ] || die "marketsync rejected deliveries: see $OUT/marketsync.log"
ms_all "$DATA" > "$OUT/marketsync-all.ndjson" 2> "$OUT/marketsync-all.log" || true
[ "$(rejected "$OUT/marketsync-all.log")" = 0 ] || die "marketsync (all mappings) rejected deliveries: see $OUT/marketsync-all.log"
jq_impl "$DATA" > "$OUT/jq.ndjson" || die "jq failed"
ms_two "$PY_DATA" > "$OUT/marketsync-subset.ndjson" 2>/dev/null || true
py_impl --compiled-validator "$PY_DATA" > "$OUT/python.ndjson" || die "placed_order.py failed or rejected bodies"
py_impl "$PYDOC_DATA" > "$OUT/python-documented.ndjson" || die "placed_order.py failed or rejected bodies"

# Byte-identical is the goal; "equal" also passes: the same JSON values line by line, in the same
# order, keys sorted and numbers as jq prints them (jq writes 630 where serde_json writes 630.0).
agree() { # name expected actual
  if cmp -s "$2" "$3"; then
    echo "$1: byte-identical to marketsync ($(wc -l < "$3") requests)" >&2
    return
  fi
  if cmp -s <(jq -cS . "$2") <(jq -cS . "$3"); then
    echo "$1: equal to marketsync after normalising JSON ($(wc -l < "$3") requests; formatting differs)" >&2
    return
  fi
  local line
  line=$(cmp <(jq -cS . "$2") <(jq -cS . "$3") 2>&1 | awk '{ print $NF }' || true)
  [[ $line =~ ^[0-9]+$ ]] || line=1
  echo "$1 differs from marketsync at request line ${line:-?} ($(wc -l < "$2") vs $(wc -l < "$3") lines):" >&2
  diff <(sed -n "${line}p" "$2" | jq -S .) <(sed -n "${line}p" "$3" | jq -S .) | head -40 >&2 || true
  die "$1 and marketsync disagree"
}
agree jq "$OUT/marketsync.ndjson" "$OUT/jq.ndjson"
# With several workers the output must still be in input order: byte for byte the same.
for jobs in 1 2; do
  ms_two --jobs "$jobs" "$DATA" > "$OUT/marketsync-jobs$jobs.ndjson" 2>/dev/null || true
  cmp -s "$OUT/marketsync.ndjson" "$OUT/marketsync-jobs$jobs.ndjson" \
    || die "marketsync --jobs $jobs writes different output from the default run"
done
echo "marketsync --jobs 1 and --jobs 2: byte-identical output" >&2
agree python "$OUT/marketsync-subset.ndjson" "$OUT/python.ndjson"
head -n "$(wc -l < "$OUT/python-documented.ndjson")" "$OUT/python.ndjson" | cmp -s - "$OUT/python-documented.ndjson" \
  || die "placed_order.py writes different requests with jsonschema.validate and with a compiled validator"
echo "python with jsonschema.validate: byte-identical to the compiled validator's output ($(wc -l < "$OUT/python-documented.ndjson") requests)" >&2
sed -n '/^summary:/,$p' "$OUT/marketsync.log" >&2

# --- timing ---------------------------------------------------------------------------------
OUT_BYTES=$(stat -c %s "$OUT/marketsync.ndjson")
RESULTS=$OUT/results.tsv
: > "$RESULTS"

median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# run_once ROUND NAME INPUT COMMAND...: one run, output to /dev/null, appended to RUNS_TSV as
# round, name, input bytes, deliveries, wall µs, peak RSS kB, CPU (user+sys) µs.
RUNS_TSV=$OUT/runs.tsv
: > "$RUNS_TSV"
run_once() {
  local round=$1 name=$2 input=$3 start end kb user sys; shift 3
  start=$(date +%s%N)
  /usr/bin/time -f '%M %U %S' -o "$OUT/time.txt" "$@" > /dev/null 2> "$OUT/stderr.txt" \
    || die "$name failed (exit $?): $(tail -n 5 "$OUT/stderr.txt")"
  end=$(date +%s%N)
  read -r kb user sys < <(tail -n 1 "$OUT/time.txt")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$(stat -c %s "$input")" "$(wc -l < "$input")" \
    "$(( (end - start) / 1000 ))" "$kb" "$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%d", (u + s) * 1e6 }')" >> "$RUNS_TSV"
  echo "round $round: $name: $(( (end - start) / 1000000 )) ms, peak RSS $kb kB" >&2
}

# Every implementation once per round, rounds one after another: a burst of other work on this
# shared machine then slows one run of several implementations rather than every run of one,
# and --jobs 1 and --jobs 2 run back to back, so their ratio is taken within each round.
each_implementation() {
  local r=$1
  run_once "$r" "marketsync --jobs 1" "$DATA" "${PIN[@]}" "$BIN" run --dry-run --jobs 1 --mappings "$MAPPINGS" "$DATA"
  run_once "$r" "marketsync --jobs 2" "$DATA" "$BIN" run --dry-run --jobs 2 --mappings "$MAPPINGS" "$DATA"
  run_once "$r" "marketsync --jobs 2, all 7 default mappings" "$DATA" "$BIN" run --dry-run --jobs 2 "$DATA"
  run_once "$r" "jq $(jq --version | sed 's/^jq-//')" "$DATA" "${PIN[@]}" jq -nc -f "$ROOT/benches/perf/placed_order.jq" "$DATA"
  run_once "$r" "python, jsonschema.validate per body (first $PYDOC_SIZE)" "$PYDOC_DATA" "${PIN[@]}" "$PY" "$ROOT/benches/perf/placed_order.py" "$PYDOC_DATA"
  run_once "$r" "python --compiled-validator (first $PY_SIZE)" "$PY_DATA" "${PIN[@]}" "$PY" "$ROOT/benches/perf/placed_order.py" --compiled-validator "$PY_DATA"
  run_once "$r" "floor (serde_json parse + write)" "$DATA" "${PIN[@]}" "$FLOOR" --bytes "$OUT_BYTES" "$DATA"
}

say "timing ($RUNS rounds, median)"
# Other work on the machine inflates wall times: say how busy it was.
# Busy CPU time of the whole machine (user, nice, system, irq, softirq, steal), in clock ticks.
busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
BUSY_BEFORE=$(busy_ticks)
TIMING_START=$(date +%s)
# The inputs start in the page cache.
cat "$DATA" "$PY_DATA" "$PYDOC_DATA" > /dev/null
for ((round = 1; round <= RUNS; round++)); do
  each_implementation "$round"
done

# Per implementation, in the order run: name, input bytes, deliveries, median wall µs, largest
# peak RSS kB, median CPU µs, every wall µs.
awk -F'\t' '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    return a[int((n + 1) / 2)]
  }
  !($2 in seen) { seen[$2] = 1; order[++n] = $2; bytes[$2] = $3; lines[$2] = $4 }
  { walls[$2] = walls[$2] (walls[$2] == "" ? "" : " ") $5; cpus[$2] = cpus[$2] " " $7; if ($6 > rss[$2]) rss[$2] = $6 }
  END { for (i = 1; i <= n; i++) { k = order[i]
    printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k, bytes[k], lines[k], median(walls[k]), rss[k], median(cpus[k]), walls[k] } }
' "$RUNS_TSV" > "$RESULTS"
# --jobs 2 against --jobs 1, each round's pair, median over rounds.
# One ratio per round, word-split into median's arguments.
SCALING=$(median $(awk -F'\t' '$2 == "marketsync --jobs 1" { one[$1] = $5 } $2 == "marketsync --jobs 2" { two[$1] = $5 }
  END { for (r in one) print one[r] / two[r] }' "$RUNS_TSV"))

# Whatever else ran while we timed: the machine's busy time less our runs' own CPU time.
OTHER_CPU=$(awk -v ticks="$(( $(busy_ticks) - BUSY_BEFORE ))" -v hz="$(getconf CLK_TCK)" -F'\t' \
  '{ ours += $7 } END { other = ticks / hz - ours / 1e6; printf "%.1f", other < 0 ? 0 : other }' "$RUNS_TSV")
TIMING_SECONDS=$(( $(date +%s) - TIMING_START ))

# Peak memory must not grow with the input: one run of each setting on the large data.
MEM_RESULTS=$OUT/memory.tsv
: > "$MEM_RESULTS"
peak_rss() { # name command...
  local name=$1 kb wall; shift
  cat "$MEM_DATA" > /dev/null
  /usr/bin/time -f '%M %e' -o "$OUT/time.txt" "$@" > /dev/null 2> "$OUT/stderr.txt" \
    || die "$name failed (exit $?): $(tail -n 5 "$OUT/stderr.txt")"
  read -r kb wall < <(tail -n 1 "$OUT/time.txt")
  printf '%s\t%s\t%s\n' "$name" "$kb" "$wall" >> "$MEM_RESULTS"
  echo "$name: peak RSS $kb kB in $wall s" >&2
}
if [ -n "$MEM_DATA" ]; then
  say "peak memory over $MEM_SIZE (one run each)"
  peak_rss "marketsync --jobs 1" "$BIN" run --dry-run --jobs 1 --mappings "$MAPPINGS" "$MEM_DATA"
  peak_rss "marketsync --jobs 2" "$BIN" run --dry-run --jobs 2 --mappings "$MAPPINGS" "$MEM_DATA"
  peak_rss "marketsync --jobs 1, all 7 default mappings" "$BIN" run --dry-run --jobs 1 "$MEM_DATA"
  peak_rss "marketsync --jobs 2, all 7 default mappings" "$BIN" run --dry-run --jobs 2 "$MEM_DATA"
fi

# --- report ---------------------------------------------------------------------------------
cpu=$(lscpu 2>/dev/null | awk -F: '/^Model name/ { sub(/^ +/, "", $2); print $2; exit }')
[ -n "$cpu" ] || cpu=$(awk -F: '/model name/ { sub(/^ +/, "", $2); print $2; exit }' /proc/cpuinfo)
if commit=$(git rev-parse --short HEAD 2>/dev/null); then
  git diff --quiet HEAD || commit="$commit (with uncommitted changes)"
else
  commit="(not a git checkout)"
fi
{
  echo "### marketsync performance, $(date -u +%Y-%m-%d)"
  echo
  echo "- machine: $cpu, $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1e6 }' /proc/meminfo) RAM, $(uname -sr)"
  echo "- $(rustc -V), $(jq --version), $("$PY" --version 2>&1)"
  echo "- marketsync $commit; data: seed $SEED, $SIZE ($(stat -c %s "$DATA") bytes, $(wc -l < "$DATA") deliveries), $(wc -l < "$OUT/marketsync.ndjson") requests, $OUT_BYTES output bytes"
  echo "- median of $RUNS rounds (every implementation once per round, in turn), output to /dev/null, input in the page cache; MB = 10^6 bytes of input${PIN:+; single-threaded runs pinned to one CPU (taskset)}"
  echo "- other work on the machine while timing: $OTHER_CPU CPU s in $TIMING_SECONDS s (the machine's busy time less the timed runs' own); much above a few seconds, wall times are inflated (the CPU column is less affected)"
  echo "- marketsync, jq and Python map placed-order + ordered-product only; the all-mappings row is the whole default set, for scale"
  echo
  echo "| implementation | deliveries/s | MB/s | peak RSS MB | × jq | × python (validate per body) | × python (compiled validator) | of floor | CPU s per 100 MB |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  awk -F'\t' '
    { name[NR] = $1; mbs[NR] = $2 / $4; dps[NR] = $3 / $4 * 1e6; rss[NR] = $5 / 1024; cpu[NR] = $6 / $2 * 100
      if ($1 ~ /^jq/) jq = mbs[NR]; if ($1 ~ /^python, jsonschema/) pd = mbs[NR]
      if ($1 ~ /^python --compiled/) pc = mbs[NR]; if ($1 ~ /^floor/) fl = mbs[NR] }
    END { for (i = 1; i <= NR; i++)
      printf "| %s | %.0f | %.1f | %.1f | %.2f× | %.1f× | %.1f× | %.0f%% | %.2f |\n", name[i], dps[i], mbs[i], rss[i],
        mbs[i] / jq, mbs[i] / pd, mbs[i] / pc, 100 * mbs[i] / fl, cpu[i] }' "$RESULTS"
  if [ -s "$MEM_RESULTS" ]; then
    echo
    echo "Peak memory over $MEM_SIZE ($(stat -c %s "$MEM_DATA") bytes, $(wc -l < "$MEM_DATA") deliveries), one run each:"
    echo
    echo "| setting | peak RSS MB | wall s |"
    echo "| --- | ---: | ---: |"
    awk -F'\t' '{ printf "| %s | %.1f | %.1f |\n", $1, $2 / 1024, $3 }' "$MEM_RESULTS"
  fi
  echo
  # The issue's targets, each against the numbers above.
  awk -F'\t' -v scaling="$SCALING" -v rounds="$RUNS" -v mem_peak="$(sort -t$'\t' -k2 -n "$MEM_RESULTS" | tail -n 1 | cut -f2)" '
    { mbs[$1] = $2 / $4; rss[$1] = $5 / 1024
      if ($1 ~ /^jq/) jq = mbs[$1]; if ($1 ~ /^python, jsonschema/) pd = mbs[$1]
      if ($1 ~ /^python --compiled/) pc = mbs[$1]; if ($1 ~ /^floor/) fl = mbs[$1]
      if ($1 ~ /^marketsync/ && $1 !~ /all 7/) { if (one == "") one = mbs[$1]; if ($1 ~ /--jobs 2/) two = mbs[$1]
        if (rss[$1] > peak) peak = rss[$1] }
      if ($1 ~ /all 7/ && rss[$1] > peak) peak = rss[$1] }
    function mark(ok) { return ok ? "met" : "NOT met" }
    END {
      if (mem_peak / 1024 > peak) peak = mem_peak / 1024
      printf "targets: one core ≥ 3× jq: %.2f× (%s); ", one / jq, mark(one / jq >= 3)
      printf "2 cores ≥ 5.5× jq: %.2f× (%s); --jobs 2 ≥ 1.7× --jobs 1: %.2f× (%s; median of the %d rounds\x27 ratios); ", two / jq, mark(two / jq >= 5.5), scaling, mark(scaling >= 1.7), rounds
      printf "≥ 30× python: %.1f× the script as jsonschema documents it (%s), %.1f× the compiled-validator script, which the floor itself beats by only %.1f×; ", one / pd, mark(one / pd >= 30), one / pc, fl / pc
      printf "one core ≥ 40%% of floor: %.0f%% (%s); peak RSS < 64 MB: %.1f MB (%s)\n",
        100 * one / fl, mark(one / fl >= 0.4), peak, mark(peak < 64) }' "$RESULTS"
} | tee "$OUT/results.md"
echo >&2
echo "(written to $OUT/results.md; raw runs in $RESULTS)" >&2
