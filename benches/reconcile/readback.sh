#!/usr/bin/env bash
# The read budget of reading Klaviyo back (issue 17): how many requests to each of Klaviyo's
# read endpoints a reconciliation of a day of about 10,000 orders makes, and how long those
# requests take at Klaviyo's published limits. From a checkout, in one go:
#
#   1. builds release (marketsync and the data generator), generates the day (the same cache as
#      run.sh: target/reconcile-bench/);
#   2. starts the Klaviyo stand-in (clock 60x) and sends the whole day into it with
#      `marketsync run`: a clean day, everything accepted and held;
#   3. starts the Marketplacer stand-in serving the day and runs `marketsync reconcile
#      --report-only` over exactly the day, reading that Klaviyo back (at the same 60x clock,
#      so its read limits pace the run as the real ones would, sixty times faster);
#   4. prints, per read endpoint: the requests made, the published limit, and the least time
#      those requests take at the published limits (a burst per second and a steady limit per
#      minute: max((ceil(n/burst) - 1) s, (ceil(n/steady) - 1) min)), their sum (the reads are
#      made one endpoint after another), the people and events read, and what was found.
#
#   benches/reconcile/readback.sh [--count N]
#
# --count: deliveries generated (30,600 give about 10,000 orders). MARKETSYNC_BENCH_SKIP_BUILD=1
# uses target/release as it is; MARKETSYNC_BENCH_BIN_DIR=target/debug (with --count 3000) tries
# the script on a debug build. Exits 1 when the clean day reads back with any finding, or a run
# fails.
set -euo pipefail

COUNT=30600
while [ $# -gt 0 ]; do
  case "$1" in
    --count) COUNT=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "readback.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN_DIR=${MARKETSYNC_BENCH_BIN_DIR:-$ROOT/target/release}
BIN=$BIN_DIR/marketsync
GEN=$BIN_DIR/examples/generate-deliveries
DATA=$ROOT/target/reconcile-bench/$(basename "$BIN_DIR")
RUN=$(mktemp -d "${TMPDIR:-/tmp}/readback-bench.XXXXXX")
mkdir -p "$DATA"
START=2026-11-30T00:00:00Z
UNTIL=2026-12-01T00:00:00Z
MP_PORT=18876
KL_PORT=18875
SCALE=60

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf '\nreadback.sh: FAILED: %s\n' "$*" >&2; exit 1; }

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT

# A stand-in loading a day of 30,600 deliveries takes a while before it listens (minutes on a
# debug build).
wait_port() {
  for _ in $(seq 1 3000); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  die "nothing listens on port $1"
}

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

export KLAVIYO_API_KEY=pk_standin KLAVIYO_BASE_URL=http://127.0.0.1:$KL_PORT
export MARKETPLACER_API_KEY=mp_standin

say "sending the day into the Klaviyo stand-in (clock ${SCALE}x)"
"$BIN" standin --port "$KL_PORT" --time-scale "$SCALE" >"$RUN/klaviyo.log" 2>&1 &
PIDS+=($!)
wait_port "$KL_PORT"
"$BIN" run --state "$RUN/state.db" --time-scale "$SCALE" --hold 0 "$DAY" 2>"$RUN/run.log" \
  || { tail -30 "$RUN/run.log" >&2; die "the day could not be sent"; }

say "reconciling the day, reading Klaviyo back"
"$BIN" standin marketplacer --port "$MP_PORT" --data "$DAY" >"$RUN/mp.log" 2>&1 &
PIDS+=($!)
wait_port "$MP_PORT"
mkdir -p "$RUN/client"
printf 'marketplacer:\n  url: http://127.0.0.1:%s\n  page_size: 500\nreconcile:\n  settle: 1m\n' "$MP_PORT" \
  >"$RUN/client/client.yaml"
"$BIN" reconcile --report-only --format json --client "$RUN/client" --state "$RUN/state.db" \
  --since "$START" --until "$UNTIL" --time-scale "$SCALE" \
  >"$RUN/report.json" 2>"$RUN/reconcile.log" || true
[ -s "$RUN/report.json" ] || { cat "$RUN/reconcile.log" >&2; die "no report"; }

python3 - "$RUN/report.json" "$DAY" "$SCALE" <<'PY'
import json, math, sys
report = json.load(open(sys.argv[1]))
scale = float(sys.argv[3])
orders, people = set(), set()
for line in open(sys.argv[2]):
    node = json.loads(line)["body"]["payload"]["data"]["node"]
    if node["__typename"] == "Invoice":
        orders.add(node["order"]["legacyId"])
        people.add(node["order"]["emailAddress"].strip().lower())
read = report.get("read_back")
if not read:
    sys.exit("readback.sh: the report has no read_back: " + json.dumps(report)[:400])
# Klaviyo's published limits (x-klaviyo-ratelimit): burst a second, steady a minute.
limits = {"GET /api/metrics": (10, 150), "GET /api/events": (350, 3500),
          "GET /api/profiles": (75, 700), "POST /api/metric-aggregates": (3, 60)}
print(f"\nA day of {len(orders)} orders, {len(people)} people: Klaviyo read back")
print(f"{'endpoint':<30} {'requests':>8} {'limit':>12} {'at the limit':>13} {'waited (60x)':>13}")
total = 0.0
for r in read["reads"]:
    burst, steady = limits[r["endpoint"]]
    n = r["requests"]
    least = max((math.ceil(n / burst) - 1), (math.ceil(n / steady) - 1) * 60, 0)
    total += least
    print(f"{r['endpoint']:<30} {n:>8} {f'{burst}/s {steady}/m':>12} {least:>12.0f}s "
          f"{r['waited_ms'] / 1000 * scale:>12.1f}s")
requests = sum(r["requests"] for r in read["reads"])
print(f"{'all':<30} {requests:>8} {'':>12} {total:>12.0f}s")
print(f"read-back wall time at {scale:.0f}x: {read['elapsed_ms'] / 1000:.1f} s; "
      f"findings: {len(read['discrepancies'])}; requeued: {report['findings']['requeued_from_klaviyo']}")
for note in report["findings"]["read_back_notes"]:
    print("note:", note)
for d in read["discrepancies"][:10]:
    print("finding:", d["class"], d["key"], d["detail"])
sys.exit(1 if read["discrepancies"] else 0)
PY
