#!/usr/bin/env bash
# The matcher benchmark: the Rust index and linear scan (one core) and Medplum's
# matchesSearchRequest on the same 1,000-subscription workload, side by side.
# Usage: scripts/bench-matcher.sh   (needs the Synthea data set: FHIR_HUB_SYNTHEA, or
# ../shared/data/synthea-r4-resources.ndjson.gz beside the repository; see scripts/synthea.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${FHIR_HUB_BENCH_OUT:-$(mktemp -d)}"
export FHIR_HUB_BENCH_OUT="$OUT"
. scripts/synthea.sh
DATA="$SYNTHEA"

(cd integration-tests/medplum && npm ci --no-audit --no-fund --silent)
taskset -c 0 cargo bench --locked -p hub-fhir --bench matcher 2>/dev/null | tee "$OUT/rust.txt"
zcat "$DATA" | grep '^{"resourceType":"Observation"' > "$OUT/observations.ndjson"
taskset -c 0 node integration-tests/medplum/bench.mjs "$OUT/medplum-workload.json" "$OUT/observations.ndjson" 30 | tee "$OUT/medplum.txt"

ours=$(sed -n 's/.*indexed_b=\([0-9]*\).*/\1/p' "$OUT/rust.txt")
theirs=$(sed -n 's/.*rate=\([0-9.]*\).*/\1/p' "$OUT/medplum.txt")
a=$(sed -n 's/.*indexed_a=\([0-9]*\).*/\1/p' "$OUT/rust.txt")
lin=$(sed -n 's/.*linear_a=\([0-9]*\).*/\1/p' "$OUT/rust.txt")
ratio=$(sed -n 's/.*ratio_a=\([0-9]*\).*/\1/p' "$OUT/rust.txt")
echo
echo "summary (events/s, one core, JSON parsing included)"
printf '  101,000 subscriptions: indexed %s   linear scan %s   (%sx on the same sample)\n' "$a" "$lin" "$ratio"
printf '  1,000 subscriptions:   indexed %s   Medplum %s   (%sx)\n' "$ours" "$theirs" "$(awk -v a="$ours" -v b="$theirs" 'BEGIN{printf "%.0f", a/b}')"
