#!/usr/bin/env bash
# Regenerates the test data kept in the repository from the larger shared data set beside it
# (../shared, see integration-tests/data/README.md and services/fhirpath/tests/data/README.md):
#   - services/fhirpath/tests/data: the official FHIRPath suites (flat JSON form) and their
#     JSON input resources, copied as they are;
#   - integration-tests/data/synthea-r4-observations.ndjson.gz: the first 4,000 Observation
#     lines of the Synthea data set, in file order (deterministic), gzip without a name or
#     time stamp so that the same input gives the same bytes.
# The tests read only these copies; nothing here runs during a test.
# Usage: scripts/vendor-test-data.sh [SHARED_DIR]   (default: ../shared beside the repository)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${1:-$PWD/../shared}"
if [ ! -d "$SHARED/fhirpath-tests" ] || [ ! -f "$SHARED/data/synthea-r4-resources.ndjson.gz" ]; then
  echo "no shared data set at $SHARED (expected fhirpath-tests/ and data/synthea-r4-resources.ndjson.gz);" >&2
  echo "the copies in the repository are what the tests use, nothing to do" >&2
  exit 1
fi

FP=services/fhirpath/tests/data
mkdir -p "$FP/r4" "$FP/r5" "$FP/inputs-json"
cp "$SHARED/fhirpath-tests/r4/tests-fhir-r4.json" "$FP/r4/"
cp "$SHARED/fhirpath-tests/r5/tests-fhir-r5.json" "$FP/r5/"
cp "$SHARED/fhirpath-tests/COMMIT" "$FP/COMMIT"
rm -f "$FP"/inputs-json/*.json
cp "$SHARED"/fhirpath-tests/inputs-json/*.json "$FP/inputs-json/"
chmod -R u+w "$FP"

OBS=integration-tests/data/synthea-r4-observations.ndjson.gz
# awk stops after the 4,000th: zcat's broken pipe then is expected, not a failure
set +o pipefail
zcat "$SHARED/data/synthea-r4-resources.ndjson.gz" 2>/dev/null \
  | awk '/^\{"resourceType":"Observation"/ { print; if (++n == 4000) exit }' | gzip -n -9 > "$OBS"
set -o pipefail
[ "$(zcat "$OBS" | wc -l)" = 4000 ] || { echo "$OBS: fewer than 4,000 Observations" >&2; exit 1; }
echo "wrote $FP ($(du -sh "$FP" | cut -f1)) and $OBS ($(du -h "$OBS" | cut -f1), $(zcat "$OBS" | wc -l) Observations)"
