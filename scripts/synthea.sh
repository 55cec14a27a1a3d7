# Sourced by the benchmark scripts: sets SYNTHEA to the full Synthea data set
# (FHIR_HUB_SYNTHEA, or ../shared/data beside the repository) and exports FHIR_HUB_SYNTHEA,
# or says what to do and exits 0 when it is absent. (The tests do not need it: they use the
# subset in integration-tests/data.)
SYNTHEA="${FHIR_HUB_SYNTHEA:-$PWD/../shared/data/synthea-r4-resources.ndjson.gz}"
if [ ! -f "$SYNTHEA" ]; then
  cat >&2 <<MSG
benchmark skipped: the Synthea data set is not at $SYNTHEA.
It is synthea-r4-resources.ndjson.gz (191,093 synthetic R4 resources, one per line, from
smart-on-fhir/generated-sample-data, Apache-2.0; see integration-tests/data/README.md).
Set FHIR_HUB_SYNTHEA=/path/to/it, or put it at ../shared/data/ beside the repository, and run again.
MSG
  exit 0
fi
export FHIR_HUB_SYNTHEA="$SYNTHEA"
