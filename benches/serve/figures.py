#!/usr/bin/env python3
"""The arithmetic of benches/serve/run.sh: picks the Placed Order webhooks, joins what replay
reported with what the Klaviyo stand-in accepted and what the state file holds, and judges the
figures against issue 13's goals. Standard library only.

  figures.py free-port
  figures.py pick-orders INPUT OUT --orders N [--skip N]
  figures.py sample-depths BIN STATE OUT (queue depth per lane every 250 ms, until killed)
  figures.py throughput --input F --report F --replay-log F --state DB --rss F --hwm KB
                        --started-ms MS --rate N --out JSON
  figures.py lag --name NAME --input F --report F --standin URL --goal-ms MS --out JSON
                 [--depths FILE --queued-goal N]
  figures.py summary JSON...            (prints the table; exit 1 if a goal is missed)
"""

import argparse
import json
import math
import re
import socket
import sqlite3
import sys
import time
import urllib.request


def percentile(values, p):
    """Nearest rank, as replay reports it: the value p% of the values are at or under."""
    ordered = sorted(values)
    rank = min(max(math.ceil(p / 100 * len(ordered)), 1), len(ordered))
    return ordered[rank - 1]


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def envelope(capture):
    """The body of a capture line as generate-deliveries writes it."""
    body = capture["body"]
    return json.loads(body) if isinstance(body, str) else body


def placed_order_id(capture):
    """The unique_id the default placed-order mapping gives this invoice's order."""
    node = envelope(capture)["payload"]["data"]["node"]
    marketplace = capture["headers"]["Marketplacer-Vertical"]
    return f"{marketplace}:placed-order:{node['order']['legacyId']}"


def free_port(_args):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def pick_orders(args):
    """The first invoice of each order (the one that makes its Placed Order), after --skip orders."""
    seen, kept = set(), 0
    with open(args.input, encoding="utf-8") as f, open(args.out, "w", encoding="utf-8") as out:
        for line in f:
            capture = json.loads(line)
            order = envelope(capture)["payload"]["data"]["node"]["order"]["legacyId"]
            if order in seen:
                continue
            seen.add(order)
            if len(seen) <= args.skip:
                continue
            out.write(line)
            kept += 1
            if kept == args.orders:
                break
    if kept < args.orders:
        sys.exit(f"figures.py: {args.input} has {kept} orders after --skip {args.skip}, not {args.orders}")


def sample_depths(args):
    """Lines of `unix_ms transaction_depth profile_depth`, from `marketsync status`."""
    import subprocess

    with open(args.out, "w", encoding="utf-8") as out:
        while True:
            at = int(time.time() * 1000)
            status = subprocess.run(
                [args.bin, "status", "--state", args.state, "--format", "json"],
                capture_output=True,
                text=True,
            )
            if status.returncode == 0:
                depth = {l["lane"]: l["depth"] for l in json.loads(status.stdout)["lanes"]}
                out.write(f"{at} {depth['transaction']} {depth['profile']}\n")
                out.flush()
            time.sleep(0.25)


def answer_times(replay_log):
    """replay's own line: `answer times: N answers: p50 X ms, p95 X ms, p99 X ms, max X ms`."""
    with open(replay_log, encoding="utf-8") as f:
        for line in f:
            if line.startswith("answer times: "):
                return {k: float(v) for k, v in re.findall(r"(p50|p95|p99|max) ([0-9.]+) ms", line)}
    sys.exit(f"figures.py: no answer times in {replay_log}")


def summary_line(replay_log):
    with open(replay_log, encoding="utf-8") as f:
        return next((l.strip() for l in f if l.startswith("summary: ")), "no summary")


def throughput(args):
    ids = []
    with open(args.input, encoding="utf-8") as f:
        for line in f:
            ids.append(envelope(json.loads(line))["id"])
    report = read_jsonl(args.report)
    accepted = [r for r in report if r["status"] == 200 and r["accepted_at_ms"] is not None]
    reported_ids = {r["id"] for r in accepted}
    missing_answers = len(set(ids) - reported_ids)
    db = sqlite3.connect(f"file:{args.state}?mode=ro", uri=True)
    stored = dict(db.execute("SELECT delivery_id, count(*) FROM inbox GROUP BY delivery_id"))
    db.close()
    not_stored = sum(1 for i in ids if i not in stored)
    stored_twice = sum(1 for n in stored.values() if n > 1)
    last = max(r["accepted_at_ms"] for r in accepted) if accepted else args.started_ms
    seconds = (last - args.started_ms) / 1000
    rss = [int(x) for x in open(args.rss, encoding="utf-8").read().split() if x.isdigit()]
    times = answer_times(args.replay_log)
    # Answer time counts from when a request was sent; a receiver that stalls also delays the
    # requests waiting for its slots, so this counts from when each was planned to be sent.
    from_plan = [r.get("started_late_ms", 0) + r["answer_ms"] for r in accepted if r["answer_ms"] is not None]
    result = {
        "scenario": "throughput",
        "deliveries": len(ids),
        "accepted_200": len(accepted),
        "retried_or_failed": sum(1 for r in report if r["attempts"] > 1 or r["status"] != 200),
        "seconds": round(seconds, 2),
        "accepted_per_second": round(len(accepted) / seconds, 1) if seconds > 0 else 0,
        "answer_ms": times,
        "from_planned_start_ms": {
            p: round(percentile(from_plan, n), 1) for p, n in (("p50", 50), ("p99", 99), ("max", 100))
        } if from_plan else {"p50": None, "p99": None, "max": None},
        "not_answered_200": missing_answers,
        "not_stored": not_stored,
        "stored_more_than_once": stored_twice,
        "stored_rows": sum(stored.values()),
        "rss_peak_mb": round(max(rss) / 1024, 1) if rss else None,
        "rss_samples": len(rss),
        "vmhwm_mb": round(args.hwm / 1024, 1),
        "replay_summary": summary_line(args.replay_log),
        "goals": {
            # The pacer starts requests at exactly --rate: 1% covers the ramp and the last answer.
            f"accepted/s >= 0.99 x {args.rate:g}": len(accepted) / seconds >= 0.99 * args.rate if seconds > 0 else False,
            "p99 answer < 100 ms": times["p99"] < 100,
            "every delivery answered 200": missing_answers == 0,
            "every delivery stored exactly once": not_stored == 0 and stored_twice == 0,
            "RSS < 100 MB": max(rss + [args.hwm]) < 100 * 1024,
        },
    }
    write(result, args.out)


def lag(args):
    captures = [json.loads(line) for line in open(args.input, encoding="utf-8")]
    by_delivery = {envelope(c)["id"]: placed_order_id(c) for c in captures}
    report = read_jsonl(args.report)
    answered = {r["id"]: r["accepted_at_ms"] for r in report if r["status"] == 200}
    deadline = time.time() + args.wait
    while True:
        with urllib.request.urlopen(f"{args.standin}/standin/submissions") as answer:
            lines = [json.loads(l) for l in answer.read().decode().splitlines() if l]
        arrived = {}
        for s in lines:
            if s["metric"] == "Placed Order" and s["kept"]:
                arrived.setdefault(s["unique_id"], s["accepted_at_ms"])
        waiting = [u for u in by_delivery.values() if u not in arrived]
        if not waiting or time.time() > deadline:
            break
        time.sleep(0.5)
    lags = [arrived[u] - answered[d] for d, u in by_delivery.items() if d in answered and u in arrived]
    result = {
        "scenario": args.name,
        "placed_orders": len(captures),
        "answered_200": len(answered),
        "reached_standin": len(captures) - len(waiting),
        "lag_ms": {
            "p50": percentile(lags, 50),
            "p99": percentile(lags, 99),
            "max": max(lags),
            "min": min(lags),
        }
        if lags
        else None,
        "goals": {
            f"p99 lag < {args.goal_ms} ms": bool(lags) and percentile(lags, 99) < args.goal_ms,
            "every Placed Order reached the stand-in": not waiting and len(answered) == len(captures),
        },
    }
    if args.depths:
        # The queue as sampled last before each Placed Order's 200: what it had ahead of it
        # (transaction lane) and beside it (profile lane).
        samples = [tuple(int(x) for x in line.split()) for line in open(args.depths, encoding="utf-8") if line.strip()]
        at_orders = []
        for accepted in sorted(answered.values()):
            before = [s for s in samples if s[0] <= accepted]
            if before:
                at_orders.append(before[-1])
        profile = [s[2] for s in at_orders]
        result["queued_at_placed_orders"] = {
            "samples": len(samples),
            "profile_max_sampled": max((s[2] for s in samples), default=None),
            "profile_max": max(profile, default=None),
            "profile_at_first": profile[0] if profile else None,
            "profile_at_last": profile[-1] if profile else None,
            "profile_min": min(profile, default=None),
            "orders_with_10000_profile_requests_queued": sum(1 for p in profile if p >= 10_000),
            "transaction_max": max((s[1] for s in at_orders), default=None),
        }
        if args.queued_goal:
            met = len(profile) == len(answered) and min(profile, default=0) >= args.queued_goal
            result["goals"][f"every Placed Order met >= {args.queued_goal} profile updates queued"] = met
    write(result, args.out)


def write(result, out):
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


def summary(args):
    results = [json.load(open(p, encoding="utf-8")) for p in args.results]
    missed = []
    print("\n| scenario | figure | value |\n| --- | --- | --- |")
    for r in results:
        name = r["scenario"]
        if name == "throughput":
            rows = [
                ("deliveries / answered 200", f"{r['deliveries']} / {r['accepted_200']}"),
                ("accepted per second", f"{r['accepted_per_second']} ({r['seconds']} s)"),
                ("answer p50 / p99 / max", "{p50} / {p99} / {max} ms".format(**r["answer_ms"])),
                ("from planned start p50 / p99 / max", "{p50} / {p99} / {max} ms".format(**r["from_planned_start_ms"])),
                ("not stored / stored twice", f"{r['not_stored']} / {r['stored_more_than_once']}"),
                ("serve RSS peak (sampled) / VmHWM", f"{r['rss_peak_mb']} / {r['vmhwm_mb']} MB"),
            ]
        else:
            lag_ms = r["lag_ms"] or {}
            rows = [
                ("Placed Orders / reached stand-in", f"{r['placed_orders']} / {r['reached_standin']}"),
                ("lag p50 / p99 / max", "{} / {} / {} ms".format(lag_ms.get("p50"), lag_ms.get("p99"), lag_ms.get("max"))),
            ]
            if "queued_at_placed_orders" in r:
                q = r["queued_at_placed_orders"]
                rows += [
                    ("profile requests queued at first / last / fewest / most", f"{q['profile_at_first']} / {q['profile_at_last']} / {q.get('profile_min')} / {q['profile_max']}"),
                    ("Placed Orders sent with 10,000+ profile requests queued", str(q["orders_with_10000_profile_requests_queued"])),
                    ("events queued ahead, most", str(q["transaction_max"])),
                ]
        for figure, value in rows:
            print(f"| {name} | {figure} | {value} |")
        for goal, met in r["goals"].items():
            print(f"| {name} | goal: {goal} | {'met' if met else 'MISSED'} |")
            if not met:
                missed.append(f"{name}: {goal}")
    if missed:
        print("\nmissed: " + "; ".join(missed))
        sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True)
    sub.add_parser("free-port").set_defaults(run=free_port)
    p = sub.add_parser("pick-orders")
    p.add_argument("input")
    p.add_argument("out")
    p.add_argument("--orders", type=int, required=True)
    p.add_argument("--skip", type=int, default=0)
    p.set_defaults(run=pick_orders)
    p = sub.add_parser("sample-depths")
    for name in ["bin", "state", "out"]:
        p.add_argument(name)
    p.set_defaults(run=sample_depths)
    p = sub.add_parser("throughput")
    for name in ["input", "report", "replay-log", "state", "rss", "out"]:
        p.add_argument(f"--{name}", required=True)
    for name in ["hwm", "started-ms"]:
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.set_defaults(run=throughput)
    p = sub.add_parser("lag")
    for name in ["name", "input", "report", "standin", "out"]:
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--goal-ms", type=int, required=True)
    p.add_argument("--wait", type=float, default=60)
    p.add_argument("--depths")
    p.add_argument("--queued-goal", type=int)
    p.set_defaults(run=lag)
    p = sub.add_parser("summary")
    p.add_argument("results", nargs="+")
    p.set_defaults(run=summary)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
