#!/usr/bin/env bash
# The benchmark of `marketsync reconcile` (issue 16): how long a day of about 10,000 orders takes
# to reconcile against the Marketplacer stand-in at Marketplacer's published limits (750
# requests per 10 s per key, 600 per IP), and where the time goes. From a checkout, in one go:
#
#   1. builds release (marketsync and the data generator), generates the day (cached in
#      target/reconcile-bench/): `generate-deliveries --start 2026-11-30T00:00:00Z --span 24h`;
#   2. a. the usual case: the day was received and sent (a state file built by `marketsync run`
#         against the Klaviyo stand-in, its clock sped up), so everything is already accepted;
#      b. an empty state file: everything is missing (`--report-only`, nothing queued);
#      each a `marketsync reconcile --report-only` over exactly the day, against a fresh
#      Marketplacer stand-in serving the day, timed (wall, and peak RSS with /usr/bin/time);
#      (the sweep only: reading Klaviyo back has its own benchmark, readback.sh);
#   3. prints, per scenario: orders and records read, requests expected, Marketplacer requests,
#      the run's wall time and where it goes: waiting for Marketplacer's answers (the stand-in
#      executing each page, on the same 2 cores), waiting on the rate limit, mapping the
#      records, classifying them in the state file (the next page is asked for while a page is
#      mapped and kept, so these overlap).
#
#   benches/reconcile/run.sh [--count N] [--page-size N] [--only a|b]
#
# --count: deliveries generated (30,600 give about 10,000 orders). MARKETSYNC_BENCH_SKIP_BUILD=1
# uses target/release as it is; MARKETSYNC_BENCH_BIN_DIR=target/debug (with --count 3000) tries
# the script on a debug build. Exits 1 when a run finds what it should not (a: anything
# missing; b: anything accepted) or fails.
set -euo pipefail

COUNT=30600
PAGE_SIZE=500
ONLY=ab
while [ $# -gt 0 ]; do
  case "$1" in
    --count) COUNT=$2; shift 2 ;;
    --page-size) PAGE_SIZE=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN_DIR=${MARKETSYNC_BENCH_BIN_DIR:-$ROOT/target/release}
BIN=$BIN_DIR/marketsync
GEN=$BIN_DIR/examples/generate-deliveries
DATA=$ROOT/target/reconcile-bench/$(basename "$BIN_DIR")
RUN=$(mktemp -d "${TMPDIR:-/tmp}/reconcile-bench.XXXXXX")
mkdir -p "$DATA"
START=2026-11-30T00:00:00Z
UNTIL=2026-12-01T00:00:00Z
MP_PORT=18866
KL_PORT=18865

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf '\nrun.sh: FAILED: %s\n' "$*" >&2; exit 1; }

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  die "nothing listens on port $1"
}

# --- build and data --------------------------------------------------------------------------
if [ "${MARKETSYNC_BENCH_SKIP_BUILD:-}" != 1 ] && [ -z "${MARKETSYNC_BENCH_BIN_DIR:-}" ]; then
  say "release build (fat LTO: about 6 minutes on 2 cores)"
  cargo build --release --locked --bin marketsync --example generate-deliveries
fi
[ -x "$BIN" ] && [ -x "$GEN" ] || die "no build in $BIN_DIR"

DAY=$DATA/day-$COUNT.ndjson
if [ ! -s "$DAY" ]; then
  say "generating a day of $COUNT deliveries"
  "$GEN" --seed 16 --count "$COUNT" --start "$START" --span 24h --out "$DAY"
fi
ORDERS=$(python3 -c '
import json, sys
orders = set()
for line in open(sys.argv[1]):
    node = json.loads(line)["body"]["payload"]["data"]["node"]
    if node["__typename"] == "Invoice":
        orders.add(node["order"]["legacyId"])
print(len(orders))' "$DAY")

export KLAVIYO_API_KEY=pk_standin KLAVIYO_BASE_URL=http://127.0.0.1:$KL_PORT
export MARKETPLACER_API_KEY=mp_standin

# The usual case's state file: the day received and sent once (cached with the data).
SENT_STATE=$DATA/sent-$COUNT.db
if [[ $ONLY == *a* ]] && [ ! -s "$SENT_STATE" ]; then
  say "building the state file of a day received and sent (Klaviyo stand-in at 60x)"
  "$BIN" standin --port "$KL_PORT" --time-scale 60 >/dev/null 2>&1 &
  PIDS+=($!)
  wait_port "$KL_PORT"
  rm -f "$SENT_STATE"*
  "$BIN" run --state "$RUN/sent.db" --time-scale 60 --hold 0 "$DAY" 2>"$RUN/run.log" \
    || { tail -30 "$RUN/run.log" >&2; die "the day could not be sent"; }
  mv "$RUN/sent.db" "$SENT_STATE"
fi

# One reconciliation over the day, against a fresh stand-in: its JSON report and RSS.
reconcile() {
  local name=$1 state=$2
  "$BIN" standin marketplacer --port "$MP_PORT" --data "$DAY" >"$RUN/mp-$name.log" 2>&1 &
  local mp=$!
  PIDS+=($mp)
  wait_port "$MP_PORT"
  mkdir -p "$RUN/client"
  printf 'marketplacer:\n  url: http://127.0.0.1:%s\n  page_size: %s\n' "$MP_PORT" "$PAGE_SIZE" \
    >"$RUN/client/client.yaml"
  /usr/bin/time -f '%M' -o "$RUN/rss-$name" \
    "$BIN" reconcile --report-only --no-klaviyo-read --format json --client "$RUN/client" --state "$state" \
    --since "$START" --until "$UNTIL" >"$RUN/report-$name.json" 2>"$RUN/reconcile-$name.log" || true
  kill "$mp" 2>/dev/null || true
  wait "$mp" 2>/dev/null || true
  [ -s "$RUN/report-$name.json" ] || { cat "$RUN/reconcile-$name.log" >&2; die "$name: no report"; }
}

printf '\nA day of %s deliveries: %s orders (page size %s)\n' "$COUNT" "$ORDERS" "$PAGE_SIZE"
printf '%-24s %8s %8s %9s %8s %8s %7s %9s %8s %9s %8s %7s\n' scenario records expected accepted \
  missing requests wall_s answers_s limits_s mapping_s state_s rss_MB
for scenario in a b; do
  [[ $ONLY == *$scenario* ]] || continue
  case $scenario in
    a) name="a. received and sent"; cp "$SENT_STATE" "$RUN/a.db"; state=$RUN/a.db ;;
    b) name="b. empty state file"; state=$RUN/b.db
       "$BIN" run --state "$state" </dev/null >/dev/null 2>&1 || die "no empty state file" ;;
  esac
  say "$name"
  reconcile "$scenario" "$state"
  python3 - "$RUN/report-$scenario.json" "$RUN/rss-$scenario" "$name" "$scenario" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
rss_kb = int(open(sys.argv[2]).read().split()[-1])
f = report["findings"]
records = sum(f["read"].values())
missing = report["missing"]
print(f'{sys.argv[3]:<24} {records:>8} {f["expected"]:>8} {f["accepted"]:>9} {missing:>8} '
      f'{f["marketplacer_requests"]:>8} {report["elapsed_seconds"]:>7.1f} '
      f'{f["answering_ms"] / 1000:>9.1f} {f["waited_ms"] / 1000:>8.1f} '
      f'{report["mapping_seconds"]:>9.1f} {report["state_file_seconds"]:>8.1f} {rss_kb / 1024:>7.0f}')
wrong = (sys.argv[4] == "a" and missing > 0) or (sys.argv[4] == "b" and f["accepted"] > 0)
sys.exit(1 if wrong else 0)
EOF
done
