#!/usr/bin/env bash
# The FHIRPath benchmark: hub-fhirpath and fhirpath.js (npm `fhirpath`, compiled expressions,
# R4 model) on the same Synthea Observations and the same three topic expressions, side by
# side, both pinned to one core. FHIRPATH_BENCH_RESOURCES (default 2000) sets how many
# distinct resources the evaluations cycle through; FHIRPATH_BENCH_SECONDS the time per
# expression. Needs the Synthea data set (FHIR_HUB_SYNTHEA, or ../shared/data beside the
# repository; see scripts/synthea.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/synthea.sh
(cd integration-tests/medplum && npm ci --no-audit --no-fund --silent)
taskset -c 0 cargo bench --locked -p hub-fhirpath --bench fhirpath 2>/dev/null
