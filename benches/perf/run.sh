#!/usr/bin/env bash
# The performance benchmark of issues 5 and 18, from a clean checkout, in one go:
#   builds release, installs the Python baseline's pinned requirements (target/perf-venv),
#   generates the deliveries of every order shape (cached in target/perf-data/), checks that
#   marketsync, jq and Python give the same requests, then times marketsync, jq (the
#   same-output program and a plain stateless one), Python and the JSON floor on the same data
#   and prints a markdown table per shape with the machine it ran on.
#
#   benches/perf/run.sh [--size 200MB] [--seed 42] [--runs 3] [--python-size 50MB]
#                       [--python-documented-size 5MB] [--memory-size 1GB]
#                       [--shapes "default rich lean"] [--intake-count 20000]
#
# --size: input size of each shape (see generate.rs: MB = 10^6 bytes). --runs: timed rounds,
# each running every implementation on every shape once; medians are reported. --python-size:
# Python is slow, so it runs on the first part of the same data only (the generator's output
# for a smaller size is a prefix of the larger one) and its throughput is computed from that.
# Python runs twice: as jsonschema's docs first show it (jsonschema.validate per body, on
# --python-documented-size of data, since it is far slower) and with one compiled validator
# (--compiled-validator, on --python-size). --memory-size: the peak memory of marketsync is also
# measured, once per setting, on this much data of the default shape (0 to skip). --shapes:
# which of the order shapes below to run, in that order. --intake-count: the path that stores
# (issue 18): `run --no-send` of this many paid invoices (the serve benchmark's deliveries,
# ~7 KB, 2.5 requests each) into a fresh state file, --runs times, on both cores (0 to skip).
#
# The shapes (generate.rs's flags; every one deterministic from the seed):
#   default  1 to 3 sellers an order, 1 to 3 lines an invoice: the data of the issue-5 figures
#   rich     2 to 3 sellers, 3 to 6 lines an invoice, longer titles, tags and more metadata:
#            every request carries more, and Placed Order's Items list is long
#   lean     one seller, one line: the fewest requests a delivery
set -euo pipefail

SIZE=200MB
SEED=42
RUNS=3
PY_SIZE=50MB
PYDOC_SIZE=5MB
MEM_SIZE=1GB
SHAPES="default rich lean"
INTAKE_COUNT=20000
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --python-size) PY_SIZE=$2; shift 2 ;;
    --python-documented-size) PYDOC_SIZE=$2; shift 2 ;;
    --memory-size) MEM_SIZE=$2; shift 2 ;;
    --shapes) SHAPES=$2; shift 2 ;;
    --intake-count) INTAKE_COUNT=$2; shift 2 ;;
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
# The order shapes, as generate.rs's flags (see the top of this file).
shape_flags() {
  case "$1" in
    default) echo "" ;;
    rich) echo "--sellers 2..3 --lines 3..6 --title-words 3..6 --tags 2..6 --metadata 2..4" ;;
    lean) echo "--sellers 1 --lines 1" ;;
    *) return 1 ;;
  esac
}
for shape in $SHAPES; do
  shape_flags "$shape" > /dev/null || die "unknown shape $shape (default, rich or lean)"
done
# Cached by shape, seed and size; regenerated when the generator is newer than the file.
data_file() { echo "$DATA_DIR/deliveries-seed$SEED-$1-$2.ndjson"; } # shape size
generate_to() { # file generator-flags...
  local file=$1; shift
  if [ ! -s "$file" ] || [ "$ROOT/benches/perf/generate.rs" -nt "$file" ]; then
    say "generating $file"
    "$GEN" --seed "$SEED" "$@" --out "$file.tmp"
    mv "$file.tmp" "$file"
  fi
}
generate() { # shape size
  # shellcheck disable=SC2046 # the flags are words
  generate_to "$(data_file "$1" "$2")" --size "$2" $(shape_flags "$1")
}
for shape in $SHAPES; do
  generate "$shape" "$SIZE"
  generate "$shape" "$PY_SIZE"
  generate "$shape" "$PYDOC_SIZE"
  for part in "$(data_file "$shape" "$PY_SIZE")" "$(data_file "$shape" "$PYDOC_SIZE")"; do
    cmp -s -n "$(stat -c %s "$part")" "$part" "$(data_file "$shape" "$SIZE")" \
      || die "$part is not a prefix of $(data_file "$shape" "$SIZE")"
  done
done
MEM_DATA=
if [ "$MEM_SIZE" != 0 ]; then
  generate default "$MEM_SIZE"
  MEM_DATA=$(data_file default "$MEM_SIZE")
fi

# The two mappings jq and Python implement, as marketsync loads a folder: the default specs
# themselves (symlinks) and an examples link, because specs name their examples as ../examples/.
MAPPINGS=$DATA_DIR/mappings
mkdir -p "$MAPPINGS"
for f in placed-order ordered-product settings; do ln -sfn "$ROOT/mappings/$f.yaml" "$MAPPINGS/$f.yaml"; done
ln -sfn "$ROOT/examples" "$DATA_DIR/examples"

# --- the implementations ---------------------------------------------------------------------
JQ_NAME="jq $(jq --version | sed 's/^jq-//')"
ms_two()   { "$BIN" run --dry-run --mappings "$MAPPINGS" "$@"; }   # placed-order + ordered-product
ms_all()   { "$BIN" run --dry-run "$@"; }                          # all default mappings
jq_impl()  { jq -nc -f "$ROOT/benches/perf/placed_order.jq" "$@"; }
jq_plain() { jq -c -f "$ROOT/benches/perf/placed_order_plain.jq" "$@"; }
py_impl()  { "$PY" "$ROOT/benches/perf/placed_order.py" "$@"; }

# --- agreement ------------------------------------------------------------------------------
rejected() { awk '$1 == "rejected" { print $2 }' "$1"; }

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
unique_ids() { jq -r '.body.data.attributes.unique_id' "$1" | sort -u; }

# Every shape's outputs go to $OUT/SHAPE/.
check_shape() { # shape
  local shape=$1 data py_data pydoc_data o=$OUT/$1 jobs
  data=$(data_file "$shape" "$SIZE")
  py_data=$(data_file "$shape" "$PY_SIZE")
  pydoc_data=$(data_file "$shape" "$PYDOC_SIZE")
  mkdir -p "$o"
  say "$shape: checking that marketsync, jq and Python agree"
  ms_two "$data" > "$o/marketsync.ndjson" 2> "$o/marketsync.log" || true
  [ "$(rejected "$o/marketsync.log")" = 0 ] || die "marketsync rejected deliveries: see $o/marketsync.log"
  ms_all "$data" > "$o/marketsync-all.ndjson" 2> "$o/marketsync-all.log" || true
  [ "$(rejected "$o/marketsync-all.log")" = 0 ] || die "marketsync (all mappings) rejected deliveries: see $o/marketsync-all.log"
  jq_impl "$data" > "$o/jq.ndjson" || die "jq failed"
  agree jq "$o/marketsync.ndjson" "$o/jq.ndjson"
  # The plain program repeats what once-per-key drops, so only the events sent can agree.
  jq_plain "$data" > "$o/jq-plain.ndjson" || die "plain jq failed"
  cmp -s <(unique_ids "$o/marketsync.ndjson") <(unique_ids "$o/jq-plain.ndjson") \
    || die "plain jq does not send the same events (unique_id) as marketsync"
  echo "plain jq: the same $(unique_ids "$o/marketsync.ndjson" | wc -l) events by unique_id, in $(wc -l < "$o/jq-plain.ndjson") requests" >&2
  # With several workers the output must still be in input order: byte for byte the same.
  for jobs in 1 2; do
    ms_two --jobs "$jobs" "$data" > "$o/marketsync-jobs$jobs.ndjson" 2>/dev/null || true
    cmp -s "$o/marketsync.ndjson" "$o/marketsync-jobs$jobs.ndjson" \
      || die "marketsync --jobs $jobs writes different output from the default run"
  done
  echo "marketsync --jobs 1 and --jobs 2: byte-identical output" >&2
  ms_two "$py_data" > "$o/marketsync-subset.ndjson" 2>/dev/null || true
  py_impl --compiled-validator "$py_data" > "$o/python.ndjson" || die "placed_order.py failed or rejected bodies"
  agree python "$o/marketsync-subset.ndjson" "$o/python.ndjson"
  py_impl "$pydoc_data" > "$o/python-documented.ndjson" || die "placed_order.py failed or rejected bodies"
  head -n "$(wc -l < "$o/python-documented.ndjson")" "$o/python.ndjson" | cmp -s - "$o/python-documented.ndjson" \
    || die "placed_order.py writes different requests with jsonschema.validate and with a compiled validator"
  echo "python with jsonschema.validate: byte-identical to the compiled validator's output ($(wc -l < "$o/python-documented.ndjson") requests)" >&2
  sed -n '/^summary:/,$p' "$o/marketsync.log" >&2
}
for shape in $SHAPES; do check_shape "$shape"; done

# --- timing ---------------------------------------------------------------------------------
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# run_once ROUND SHAPE NAME INPUT COMMAND...: one run, output to /dev/null, appended to RUNS_TSV
# as round, shape, name, input bytes, deliveries, wall µs, peak RSS kB, CPU (user+sys) µs.
RUNS_TSV=$OUT/runs.tsv
: > "$RUNS_TSV"
run_once() {
  local round=$1 shape=$2 name=$3 input=$4 start end kb user sys; shift 4
  start=$(date +%s%N)
  /usr/bin/time -f '%M %U %S' -o "$OUT/time.txt" "$@" > /dev/null 2> "$OUT/stderr.txt" \
    || die "$name failed (exit $?): $(tail -n 5 "$OUT/stderr.txt")"
  end=$(date +%s%N)
  read -r kb user sys < <(tail -n 1 "$OUT/time.txt")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$shape" "$name" "$(stat -c %s "$input")" "$(wc -l < "$input")" \
    "$(( (end - start) / 1000 ))" "$kb" "$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%d", (u + s) * 1e6 }')" >> "$RUNS_TSV"
  echo "round $round: $shape: $name: $(( (end - start) / 1000000 )) ms, peak RSS $kb kB" >&2
}

# Every implementation once per round, rounds one after another: a burst of other work on this
# shared machine then slows one run of several implementations rather than every run of one,
# and --jobs 1 and --jobs 2 run back to back, so their ratio is taken within each round.
each_implementation() { # round shape
  local r=$1 shape=$2 data py_data pydoc_data
  data=$(data_file "$shape" "$SIZE")
  py_data=$(data_file "$shape" "$PY_SIZE")
  pydoc_data=$(data_file "$shape" "$PYDOC_SIZE")
  run_once "$r" "$shape" "marketsync --jobs 1" "$data" "${PIN[@]}" "$BIN" run --dry-run --jobs 1 --mappings "$MAPPINGS" "$data"
  run_once "$r" "$shape" "marketsync --jobs 2" "$data" "$BIN" run --dry-run --jobs 2 --mappings "$MAPPINGS" "$data"
  run_once "$r" "$shape" "marketsync --jobs 1, all 7 default mappings" "$data" "${PIN[@]}" "$BIN" run --dry-run --jobs 1 "$data"
  run_once "$r" "$shape" "marketsync --jobs 2, all 7 default mappings" "$data" "$BIN" run --dry-run --jobs 2 "$data"
  run_once "$r" "$shape" "$JQ_NAME, same output" "$data" "${PIN[@]}" jq -nc -f "$ROOT/benches/perf/placed_order.jq" "$data"
  run_once "$r" "$shape" "$JQ_NAME, plain (stateless)" "$data" "${PIN[@]}" jq -c -f "$ROOT/benches/perf/placed_order_plain.jq" "$data"
  run_once "$r" "$shape" "python, jsonschema.validate per body (first $PYDOC_SIZE)" "$pydoc_data" "${PIN[@]}" "$PY" "$ROOT/benches/perf/placed_order.py" "$pydoc_data"
  run_once "$r" "$shape" "python --compiled-validator (first $PY_SIZE)" "$py_data" "${PIN[@]}" "$PY" "$ROOT/benches/perf/placed_order.py" --compiled-validator "$py_data"
  run_once "$r" "$shape" "floor (serde_json parse + write)" "$data" "${PIN[@]}" "$FLOOR" --bytes "$(stat -c %s "$OUT/$shape/marketsync.ndjson")" "$data"
  run_once "$r" "$shape" "floor, all 7 mappings' output bytes" "$data" "${PIN[@]}" "$FLOOR" --bytes "$(stat -c %s "$OUT/$shape/marketsync-all.ndjson")" "$data"
}

say "timing ($RUNS rounds, median)"
# Other work on the machine inflates wall times: say how busy it was.
# Busy CPU time of the whole machine (user, nice, system, irq, softirq, steal), in clock ticks.
busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
BUSY_BEFORE=$(busy_ticks)
TIMING_START=$(date +%s)
for ((round = 1; round <= RUNS; round++)); do
  for shape in $SHAPES; do
    # The inputs start in the page cache.
    cat "$(data_file "$shape" "$SIZE")" "$(data_file "$shape" "$PY_SIZE")" "$(data_file "$shape" "$PYDOC_SIZE")" > /dev/null
    each_implementation "$round" "$shape"
  done
done

# Per shape and implementation, in the order run: shape, name, input bytes, deliveries, median
# wall µs, largest peak RSS kB, median CPU µs, every wall µs.
RESULTS=$OUT/results.tsv
awk -F'\t' '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    return a[int((n + 1) / 2)]
  }
  { k = $2 "\t" $3 }
  !(k in seen) { seen[k] = 1; order[++n] = k; bytes[k] = $4; lines[k] = $5 }
  { walls[k] = walls[k] (walls[k] == "" ? "" : " ") $6; cpus[k] = cpus[k] " " $8; if ($7 > rss[k]) rss[k] = $7 }
  END { for (i = 1; i <= n; i++) { k = order[i]
    printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k, bytes[k], lines[k], median(walls[k]), rss[k], median(cpus[k]), walls[k] } }
' "$RUNS_TSV" > "$RESULTS"
# --jobs 2 against --jobs 1 in each round's pair, the median over rounds, for one shape.
scaling() { # shape
  # One ratio per round, word-split into median's arguments.
  # shellcheck disable=SC2046
  median $(awk -F'\t' -v shape="$1" '$2 != shape { next }
    $3 == "marketsync --jobs 1" { one[$1] = $6 } $3 == "marketsync --jobs 2" { two[$1] = $6 }
    END { for (r in one) print one[r] / two[r] }' "$RUNS_TSV")
}

# Whatever else ran while we timed: the machine's busy time less our runs' own CPU time.
OTHER_CPU=$(awk -v ticks="$(( $(busy_ticks) - BUSY_BEFORE ))" -v hz="$(getconf CLK_TCK)" -F'\t' \
  '{ ours += $8 } END { other = ticks / hz - ours / 1e6; printf "%.1f", other < 0 ? 0 : other }' "$RUNS_TSV")
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

# The path that stores: intake into the SQLite store, with the sender off (no key, nothing
# sent), on both cores; each run on a fresh state file on the local disk (fsync included).
INTAKE_RESULTS=$OUT/intake.tsv
: > "$INTAKE_RESULTS"
if [ "$INTAKE_COUNT" -gt 0 ]; then
  INTAKE_DATA=$DATA_DIR/paid-invoices-seed$SEED-$INTAKE_COUNT.ndjson
  generate_to "$INTAKE_DATA" --count "$INTAKE_COUNT" --paid-invoices-only
  say "intake: run --no-send of $INTAKE_COUNT paid invoices ($RUNS runs)"
  for ((round = 1; round <= RUNS; round++)); do
    cat "$INTAKE_DATA" > /dev/null
    rm -f "$OUT"/intake.db "$OUT"/intake.db-* "$OUT"/intake.db.lock
    /usr/bin/time -f '%e %M %P' -o "$OUT/time.txt" "$BIN" run --no-send --state "$OUT/intake.db" "$INTAKE_DATA" \
      > /dev/null 2> "$OUT/stderr.txt" || die "intake failed (exit $?): $(tail -n 5 "$OUT/stderr.txt")"
    read -r wall kb cpu < <(tail -n 1 "$OUT/time.txt")
    kept=$(python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM inbox").fetchone()[0])' "$OUT/intake.db")
    [ "$kept" = "$INTAKE_COUNT" ] || die "intake kept $kept of $INTAKE_COUNT deliveries"
    printf '%s\t%s\t%s\n' "$wall" "$kb" "${cpu%\%}" >> "$INTAKE_RESULTS"
    echo "intake round $round: $wall s, peak RSS $kb kB, CPU $cpu" >&2
  done
fi

# --- report ---------------------------------------------------------------------------------
cpu=$(lscpu 2>/dev/null | awk -F: '/^Model name/ { sub(/^ +/, "", $2); print $2; exit }')
[ -n "$cpu" ] || cpu=$(awk -F: '/model name/ { sub(/^ +/, "", $2); print $2; exit }' /proc/cpuinfo)
if commit=$(git rev-parse --short HEAD 2>/dev/null); then
  git diff --quiet HEAD || commit="$commit (with uncommitted changes)"
else
  commit="(not a git checkout)"
fi
MEM_PEAK=$(sort -t$'\t' -k2 -n "$MEM_RESULTS" | tail -n 1 | cut -f2)
{
  echo "### marketsync performance, $(date -u +%Y-%m-%d)"
  echo
  echo "- machine: $cpu, $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1e6 }' /proc/meminfo) RAM, $(uname -sr)"
  echo "- $(rustc -V), $(jq --version), $("$PY" --version 2>&1)"
  echo "- marketsync $commit; data: seed $SEED, $SIZE of each shape"
  echo "- median of $RUNS rounds (every implementation on every shape once per round, in turn), output to /dev/null, input in the page cache; MB = 10^6 bytes of input${PIN:+; single-threaded runs pinned to one CPU (taskset)}"
  echo "- other work on the machine while timing: $OTHER_CPU CPU s in $TIMING_SECONDS s (the machine's busy time less the timed runs' own); much above a few seconds, wall times are inflated (the CPU column is less affected)"
  echo "- marketsync, jq and Python map placed-order + ordered-product; the all-mappings rows are the whole default set, measured against a floor that writes their (larger) output"
  for shape in $SHAPES; do
    o=$OUT/$shape
    data=$(data_file "$shape" "$SIZE")
    echo
    echo "#### shape \`$shape\`: $(shape_flags "$shape" | sed 's/^$/(the defaults)/')"
    echo
    awk -v bytes="$(stat -c %s "$data")" -v deliveries="$(wc -l < "$data")" -v two="$(wc -l < "$o/marketsync.ndjson")" \
      -v all="$(wc -l < "$o/marketsync-all.ndjson")" -v plain="$(wc -l < "$o/jq-plain.ndjson")" -v out="$(stat -c %s "$o/marketsync.ndjson")" 'BEGIN {
      printf "%d deliveries (%.1f KB each), %d requests (%.2f a delivery; %d over all 7 mappings; the plain jq sends %d), %d output bytes\n",
        deliveries, bytes / deliveries / 1e3, two, two / deliveries, all, plain, out }'
    echo
    echo "| implementation | deliveries/s | MB/s | peak RSS MB | × jq (same output) | × plain jq | × python (validate per body) | × python (compiled validator) | of floor | CPU s per 100 MB |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    awk -F'\t' -v shape="$shape" '
      $1 != shape { next }
      { n++; name[n] = $2; mbs[n] = $3 / $5; dps[n] = $4 / $5 * 1e6; rss[n] = $6 / 1024; cpu[n] = $7 / $3 * 100
        if ($2 ~ /same output/) jq = mbs[n]; if ($2 ~ /plain/) plain = mbs[n]; if ($2 ~ /^python, jsonschema/) pd = mbs[n]
        if ($2 ~ /^python --compiled/) pc = mbs[n]; if ($2 ~ /^floor \(/) fl = mbs[n]; if ($2 ~ /^floor, all 7/) fl7 = mbs[n] }
      END { for (i = 1; i <= n; i++)
        printf "| %s | %.0f | %.1f | %.1f | %.2f× | %.2f× | %.1f× | %.1f× | %.0f%% | %.2f |\n", name[i], dps[i], mbs[i], rss[i],
          mbs[i] / jq, mbs[i] / plain, mbs[i] / pd, mbs[i] / pc, 100 * mbs[i] / (name[i] ~ /all 7/ ? fl7 : fl), cpu[i] }' "$RESULTS"
    echo
    # The issues' targets, each against the numbers above.
    awk -F'\t' -v shape="$shape" -v scaling="$(scaling "$shape")" -v rounds="$RUNS" -v mem_peak="$MEM_PEAK" '
      $1 != shape { next }
      { mbs[$2] = $3 / $5; rss = $6 / 1024; if ($2 ~ /^marketsync/ && rss > peak) peak = rss
        if ($2 ~ /same output/) jq = mbs[$2]; if ($2 ~ /plain/) plain = mbs[$2]; if ($2 ~ /^python, jsonschema/) pd = mbs[$2]
        if ($2 ~ /^python --compiled/) pc = mbs[$2]; if ($2 ~ /^floor \(/) fl = mbs[$2]; if ($2 ~ /^floor, all 7/) fl7 = mbs[$2] }
      function mark(ok) { return ok ? "met" : "NOT met" }
      END {
        one = mbs["marketsync --jobs 1"]; two = mbs["marketsync --jobs 2"]; all = mbs["marketsync --jobs 1, all 7 default mappings"]
        if (mem_peak / 1024 > peak) peak = mem_peak / 1024
        printf "targets: one core ≥ 50%% of floor: %.0f%% (%s); all 7 mappings on one core ≥ 35%% of floor: %.0f%% (%s); ", 100 * one / fl, mark(one / fl >= 0.5), 100 * all / fl7, mark(all / fl7 >= 0.35)
        printf "one core ≥ 3× plain jq: %.2f× (%s); one core ≥ 3× jq (same output): %.2f× (%s); ", one / plain, mark(one / plain >= 3), one / jq, mark(one / jq >= 3)
        printf "2 cores ≥ 5.5× jq: %.2f× (%s); --jobs 2 ≥ 1.7× --jobs 1: %.2f× (%s; median of the %d rounds\x27 ratios); ", two / jq, mark(two / jq >= 5.5), scaling, mark(scaling >= 1.7), rounds
        printf "≥ 30× python: %.1f× the script as jsonschema documents it (%s), %.1f× the compiled-validator script, which the floor itself beats by only %.1f×; ", one / pd, mark(one / pd >= 30), one / pc, fl / pc
        printf "peak RSS < 64 MB: %.1f MB (%s)\n", peak, mark(peak < 64) }' "$RESULTS"
  done
  if [ -s "$INTAKE_RESULTS" ]; then
    echo
    echo "The path that stores: \`run --no-send\` of $INTAKE_COUNT paid invoices ($(stat -c %s "$INTAKE_DATA") bytes) into a fresh state file, both cores, $RUNS runs (start-up included):"
    echo
    awk -v n="$INTAKE_COUNT" '{ w[NR] = $1; r[NR] = $2; c[NR] = $3 }
      END { for (i = 2; i <= NR; i++) for (j = i; j > 1 && w[j - 1] > w[j]; j--) { t = w[j]; w[j] = w[j - 1]; w[j - 1] = t }
        m = w[int((NR + 1) / 2)]; peak = 0; for (i = 1; i <= NR; i++) if (r[i] > peak) peak = r[i]
        printf "| deliveries/s (median) | fastest / slowest | peak RSS MB |\n| ---: | ---: | ---: |\n"
        printf "| %.0f | %.0f / %.0f | %.1f |\n\n", n / m, n / w[1], n / w[NR], peak / 1024
        printf "target: intake on two cores ≥ 5,000 deliveries/s: %.0f (%s)\n", n / m, (n / m >= 5000 ? "met" : "NOT met") }' "$INTAKE_RESULTS"
  fi
  if [ -s "$MEM_RESULTS" ]; then
    echo
    echo "Peak memory over $MEM_SIZE of the default shape ($(stat -c %s "$MEM_DATA") bytes, $(wc -l < "$MEM_DATA") deliveries), one run each:"
    echo
    echo "| setting | peak RSS MB | wall s |"
    echo "| --- | ---: | ---: |"
    awk -F'\t' '{ printf "| %s | %.1f | %.1f |\n", $1, $2 / 1024, $3 }' "$MEM_RESULTS"
  fi
} | tee "$OUT/results.md"
echo >&2
echo "(written to $OUT/results.md; raw runs in $RUNS_TSV)" >&2
