#!/usr/bin/env bash
# Every benchmark of docs/benchmarks.md in one run, one table:
#   1. end to end (`cargo bench -p fhir-hub --bench e2e`): the broker's own limit and the hub
#      in Kafka mode when FHIR_HUB_TEST_KAFKA names a broker, embedded mode, latency at fixed
#      offered loads, churn, fan-out, rest-hook scale (E2E_BENCH_* pick phases and sizes);
#   2. the matcher against a linear scan and Medplum (scripts/bench-matcher.sh);
#   3. FHIRPath against fhirpath.js (scripts/bench-fhirpath.sh).
# Writes bench.md (the tables) and bench.json (every figure) to $FHIR_HUB_BENCH_OUT
# (default ./bench-out), beside each part's own output.
# Usage: FHIR_HUB_TEST_KAFKA=127.0.0.1:9092 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# every part needs the full Synthea data set: say what to do and stop when it is absent
. scripts/synthea.sh
OUT="${FHIR_HUB_BENCH_OUT:-$PWD/bench-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export FHIR_HUB_BENCH_OUT="$OUT"

echo "== end to end" >&2
cargo bench --locked -p fhir-hub --bench e2e | tee "$OUT/e2e.txt"
echo "== matcher" >&2
scripts/bench-matcher.sh | tee "$OUT/matcher.txt"
echo "== FHIRPath" >&2
scripts/bench-fhirpath.sh | tee "$OUT/fhirpath.txt"

python3 - "$OUT" <<'PY'
import json, re, sys, datetime, platform, os
out = sys.argv[1]
figures = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{os.cpu_count()} cores, {platform.machine()}, {platform.release()}"}
md = [f"Run of {figures['date']} ({figures['machine']})", "", "### End to end", ""]
md.append(open(f"{out}/e2e.md").read().rstrip())
figures["e2e"] = json.load(open(f"{out}/e2e.json"))

rust = open(f"{out}/rust.txt").read()
m = re.search(r"^RESULT (.*)$", rust, re.M)
matcher = {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())} if m else {}
medplum = re.search(r"rate=([0-9.]+)", open(f"{out}/medplum.txt").read())
if medplum:
    matcher["medplum_b"] = float(medplum.group(1))
figures["matcher"] = matcher
md += ["", "### Matcher (one core, JSON parsing included)", "",
       "| what | events/s | against |", "|---|---|---|"]
if matcher:
    md.append(f"| A: 101,000 subscriptions, projected parse + match | {matcher['projected_a']:,.0f} | "
              f"{matcher['projected_a'] / matcher['parse_only']:.2f}x a whole `serde_json::Value` parse "
              f"({matcher['parse_only']:,.0f}/s; goal ≥ 1.2x) |")
    md.append(f"| A: whole parse + match | {matcher['indexed_a']:,.0f} | linear scan {matcher['linear_a']:,.0f}/s "
              f"({matcher['ratio_a']:,.0f}x on the same sample) |")
    if "read_publish" in matcher:
        md.append(f"| reading events as `fhir-hub publish` does (checked, record written) | {matcher['read_publish']:,.0f} | "
                  f"{matcher['read_publish'] / matcher['read_value']:.2f}x a whole `Value` parse ({matcher['read_value']:,.0f}/s) |")
        md.append(f"| reading log records as the matcher does | {matcher['read_matcher']:,.0f} | "
                  f"{matcher['read_matcher'] / matcher['read_value']:.2f}x a whole `Value` parse |")
    if "medplum_b" in matcher:
        md.append(f"| B: 1,000 subscriptions | {matcher['indexed_b']:,.0f} | Medplum {matcher['medplum_b']:.1f}/s "
                  f"({matcher['indexed_b'] / matcher['medplum_b']:,.0f}x) |")

fp = open(f"{out}/fhirpath.txt").read()
rows = re.findall(r"^\n?(\S.*)\n  hub-fhirpath\s+([0-9]+) ns/eval.*\n  fhirpath.js\s+([0-9]+) ns/eval", fp, re.M)
figures["fhirpath"] = [{"expression": e, "ns": float(a), "fhirpath_js_ns": float(b)} for e, a, b in rows]
md += ["", "### FHIRPath (ns per evaluation, one core)", "",
       "| expression | hub-fhirpath | fhirpath.js | ratio |", "|---|---|---|---|"]
for e, a, b in rows:
    md.append(f"| `{e}` | {a} | {b} | {float(b) / float(a):.1f}x |")

open(f"{out}/bench.md", "w").write("\n".join(md) + "\n")
json.dump(figures, open(f"{out}/bench.json", "w"), indent=2)
print("\n".join(md))
print(f"\nwritten: {out}/bench.md, {out}/bench.json", file=sys.stderr)
PY
