#!/usr/bin/env bash
# The whole test suite: unit tests, the store contract on SQLite and PostgreSQL, the event-log
# contract on the embedded log, librdkafka's MockCluster and a real tansu broker, and the
# end-to-end tests that start the real fhir-hub binary (with the ported Inferno suite), the
# short fault suite (tests/faults: its own PostgreSQL and tansu, killed and restarted), and
# the container test (docker/test.sh; skipped, saying why, where docker cannot run).
#
# It installs or starts what is missing:
#   - tansu 0.6.0 (cargo install, cached in $FHIR_HUB_CACHE/tansu, default ~/.cache/fhir-hub);
#   - PostgreSQL, when nothing answers on 127.0.0.1:5432 (Debian packages, then started);
#   - a Python venv with standardwebhooks, fhir.resources, websockets and PyYAML; @medplum/core and fhirpath (npm);
#   - Chromium and its WebDriver (Debian's chromium, chromium-driver) for the example dashboard;
# and sets FHIR_HUB_REQUIRE_EXTERNAL=1 so that no test silently skips a real component.
#
# Environment: FHIR_HUB_TEST_DATABASE_URL (default postgres://root@127.0.0.1:5432/test),
# FHIR_HUB_TEST_KAFKA (an existing broker; otherwise tansu is started on a free port).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${FHIR_HUB_CACHE:-$HOME/.cache/fhir-hub}"
mkdir -p "$CACHE"
log() { printf '== %s\n' "$*" >&2; }

# --- tansu -------------------------------------------------------------------------------
find_tansu() {
  for t in "$CACHE/tansu/bin/tansu" "$(command -v tansu 2>/dev/null || true)"; do
    if [ -n "$t" ] && [ -x "$t" ] && "$t" --version 2>/dev/null | grep -q '0\.6\.0'; then
      echo "$t"; return 0
    fi
  done
  return 1
}
# the fault suite (tests/faults) starts and kills a broker of its own, so tansu is needed
# even when FHIR_HUB_TEST_KAFKA names an existing broker
if ! TANSU=$(find_tansu); then
  log "installing tansu 0.6.0 into $CACHE/tansu (a long build, done once)"
  cargo install tansu@0.6.0 --locked --features dynostore,libsql --root "$CACHE/tansu"
  TANSU=$(find_tansu)
fi
export FHIR_HUB_TANSU="$TANSU"

# --- PostgreSQL ----------------------------------------------------------------------------
export FHIR_HUB_TEST_DATABASE_URL="${FHIR_HUB_TEST_DATABASE_URL:-postgres://root@127.0.0.1:5432/test}"
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! command -v pg_isready >/dev/null 2>&1 || ! pg_up; then
  log "PostgreSQL is not answering on 127.0.0.1:5432; starting one"
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
      echo "PostgreSQL is missing and this script is not root: install it or set FHIR_HUB_TEST_DATABASE_URL" >&2
      exit 1
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  pg_up || { echo "PostgreSQL did not start" >&2; exit 1; }
  # A fresh cluster: trust local TCP and give root a database, as on the project machines.
  if ! psql "$FHIR_HUB_TEST_DATABASE_URL" -c 'select 1' >/dev/null 2>&1; then
    su postgres -c "psql -qc \"DO \\\$\\\$BEGIN CREATE ROLE root SUPERUSER LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END\\\$\\\$\"" || true
    su postgres -c "createdb -O root test" 2>/dev/null || true
    hba=$(su postgres -c "psql -tAc 'show hba_file'")
    if ! grep -q 'fhir-hub test' "$hba"; then
      printf 'host all all 127.0.0.1/32 trust # fhir-hub test\n' | cat - "$hba" > "$hba.new" && mv "$hba.new" "$hba"
      chown postgres "$hba"
      su postgres -c "psql -qc 'select pg_reload_conf()'"
    fi
  fi
fi
psql "$FHIR_HUB_TEST_DATABASE_URL" -qc 'select 1' >/dev/null
# the fault suite runs a PostgreSQL of its own (initdb in a temp dir) that it can kill
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -z "${FHIR_HUB_PG_BIN:-}" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

# --- openssl (the mTLS test makes its own short-lived CA and certificates) -----------------
if ! command -v openssl >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi
# OpenSSL's headers and pkg-config, for building librdkafka with TLS and SASL
scripts/build-deps.sh

# --- Python test clients (standardwebhooks verifies signatures, fhir.resources validates
#     R4B/R5 notification bundles, websockets is a websocket subscriber) ---------------------
VENV="$CACHE/venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  }
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -r integration-tests/python/requirements.txt
export FHIR_HUB_PYTHON="$VENV/bin/python"

# --- headless Chromium (the example dashboard, docs/examples, is tested in a real browser) ----
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  log "installing Chromium and chromedriver (Debian packages)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
export FHIR_HUB_CHROMEDRIVER="$(command -v chromedriver)"

# --- Node peers (Medplum's matcher for the differential test, fhirpath.js for the benchmark)
if ! command -v npm >/dev/null 2>&1; then
  log "installing Node.js and npm (Debian packages)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
(cd integration-tests/medplum && npm ci --no-audit --no-fund --silent)
export FHIR_HUB_MEDPLUM_READY=1

# --- a real broker -------------------------------------------------------------------------
SCRATCH=$(mktemp -d)
TANSU_PID=""
cleanup() {
  if [ -n "$TANSU_PID" ]; then kill "$TANSU_PID" 2>/dev/null || true; wait "$TANSU_PID" 2>/dev/null || true; fi
  rm -rf "$SCRATCH"
}
trap cleanup EXIT
if [ -z "${FHIR_HUB_TEST_KAFKA:-}" ]; then
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  log "starting tansu on 127.0.0.1:$PORT"
  (cd "$SCRATCH" && exec "$TANSU" broker \
      --listener-url "tcp://127.0.0.1:$PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$PORT" \
      --storage-engine "sqlite://tansu.db" >"$SCRATCH/tansu.log" 2>&1) &
  TANSU_PID=$!
  up=""
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then up=1; break; fi
    kill -0 "$TANSU_PID" 2>/dev/null || break
    sleep 0.2
  done
  if [ -z "$up" ]; then
    echo "tansu did not start:" >&2; cat "$SCRATCH/tansu.log" >&2; exit 1
  fi
  export FHIR_HUB_TEST_KAFKA="127.0.0.1:$PORT"
fi
export FHIR_HUB_REQUIRE_EXTERNAL=1

# --- build and test ------------------------------------------------------------------------
log "building fhir-hub"
cargo build --locked -p fhir-hub
log "running tests (PostgreSQL: ${FHIR_HUB_TEST_DATABASE_URL}, Kafka: ${FHIR_HUB_TEST_KAFKA})"
status=0
cargo test --locked --workspace "$@" 2>&1 | tee "$SCRATCH/test.out" || status=$?
if [ "$status" != 0 ] && [ -n "$TANSU_PID" ]; then
  log "tansu log (last 40 lines)"; tail -n 40 "$SCRATCH/tansu.log" >&2 || true
fi
# The end-to-end benchmark's smoke (300 events through Kafka and embedded mode, both
# clients), so the benchmark keeps compiling and running; its figures are not checked.
log "end-to-end benchmark, smoke"
cargo test --locked -p fhir-hub --bench e2e 2>&1 | tail -n 9 || status=$?
# The official FHIRPath suites' figures (the test above enforces the known-failure lists).
cargo test --locked -q -p hub-fhirpath --test official -- --nocapture --test-threads=1 2>&1 | grep -o 'FHIRPath r[0-9] suite: .*' || true
# The Kubernetes manifests (docker/k8s): structure, probes, the secrets key's mount, and the
# real binary loading their configuration beside Kubernetes' service-link variables.
"$FHIR_HUB_PYTHON" docker/k8s/check.py --binary "${CARGO_TARGET_DIR:-target}/debug/fhir-hub" || status=$?
# The container test (docker/test.sh): the runtime image around the debug binary, on a Debian
# base image made with debootstrap (cached as the image fhir-hub-base:bookworm). As root it
# installs Debian's docker.io and starts dockerd when missing (the daemon keeps running);
# where docker cannot run at all it says why and is skipped.
container_skip=""
if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    if ! command -v dockerd >/dev/null 2>&1; then
      log "installing docker.io, docker-compose and debootstrap (Debian packages)"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null 2>&1 || true
    fi
    if command -v dockerd >/dev/null 2>&1; then
      log "starting dockerd (log: $CACHE/dockerd.log)"
      (nohup dockerd >"$CACHE/dockerd.log" 2>&1 &)
      for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    fi
  fi
  if ! docker info >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
      container_skip="no docker daemon answers, and this script is not root to start one"
    elif ! command -v dockerd >/dev/null 2>&1; then
      container_skip="no docker here, and docker.io could not be installed"
    else
      container_skip="dockerd does not run here: $(tail -n 1 "$CACHE/dockerd.log" 2>/dev/null || true)"
    fi
  fi
fi
if [ -n "$container_skip" ]; then
  echo "container test: skipped ($container_skip)"
else
  log "container test (docker/test.sh)"
  FHIR_HUB_BIN="${CARGO_TARGET_DIR:-target}/debug/fhir-hub" docker/test.sh || status=$?
fi
# One closing line for the whole run (cargo's last line is a doc-test summary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$SCRATCH/test.out"
exit "$status"
