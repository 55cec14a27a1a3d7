#!/usr/bin/env bash
# The container, tested for real: builds the runtime image (docker/Dockerfile.local) around
# the binary built on the host, on a Debian base image made from Debian's packages (no image
# registry needed), and checks what a platform team relies on:
#   - both Dockerfiles share one runtime part;
#   - the binary runs in the image (glibc), as a non-root user;
#   - open mode on 0.0.0.0 is refused;
#   - it serves with an API key created in the container; the gRPC listener is reachable;
#   - the HEALTHCHECK turns healthy;
#   - SIGTERM drains (exit 0, a "drained" log line) and the data volume outlives the container;
#   - with PostgreSQL (a container built from Debian's postgresql on the same base, on a
#     user-defined network, as docker/compose.yaml wires it): the secrets key from a mounted
#     file seals secrets, and another key under the same id is refused.
# Ends with "container test: N passed". Needs a running dockerd (scripts/test.sh starts one).
#
# Environment: FHIR_HUB_BIN (default $CARGO_TARGET_DIR/debug/fhir-hub, else target/debug),
# FHIR_HUB_DOCKER_BASE (default fhir-hub-base:bookworm; made with debootstrap when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${FHIR_HUB_BIN:-${CARGO_TARGET_DIR:-target}/debug/fhir-hub}"
BASE="${FHIR_HUB_DOCKER_BASE:-fhir-hub-base:bookworm}"
IMAGE=fhir-hub:container-test
PG_IMAGE=fhir-hub-test-postgres:bookworm
RUN_ID="fhtest$$"
NET="$RUN_ID-net"
VOL="$RUN_ID-data"
SCRATCH=$(mktemp -d)
PASSED=0

log() { printf '== %s\n' "$*" >&2; }
# a container's log (read whole: `docker logs | grep -q` fails under pipefail when grep
# stops reading early)
logs_of() { docker logs "$1" 2>&1; }
pass() { PASSED=$((PASSED + 1)); printf 'ok %d - %s\n' "$PASSED" "$*"; }
fail() {
  printf 'FAILED: %s\n' "$*" >&2
  for c in $(docker ps -aq --filter "name=$RUN_ID"); do
    echo "---- logs of $(docker inspect -f '{{.Name}}' "$c") ----" >&2
    docker logs --tail 40 "$c" >&2 2>&1 || true
  done
  exit 1
}
cleanup() {
  docker ps -aq --filter "name=$RUN_ID" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker volume rm "$VOL" >/dev/null 2>&1 || true
  docker network rm "$NET" >/dev/null 2>&1 || true
  rm -rf "$SCRATCH"
}
trap cleanup EXIT

docker info >/dev/null 2>&1 || { echo "docker/test.sh: no running docker daemon" >&2; exit 2; }
[ -x "$BIN" ] || { echo "docker/test.sh: $BIN is missing: cargo build -p fhir-hub" >&2; exit 2; }

# --- the two Dockerfiles share their runtime part ----------------------------------------
runtime() { sed -n '/^# >>> runtime/,/^# <<< runtime/p' "$1"; }
[ -n "$(runtime docker/Dockerfile)" ] || fail "docker/Dockerfile has no runtime markers"
diff <(runtime docker/Dockerfile) <(runtime docker/Dockerfile.local) >&2 \
  || fail "the runtime parts of docker/Dockerfile and docker/Dockerfile.local differ"
pass "docker/Dockerfile and docker/Dockerfile.local share the runtime part"

# --- docker/compose.yaml is valid (health conditions, restart policies, the secrets key) ------
if command -v docker-compose >/dev/null 2>&1; then
  docker-compose -f docker/compose.yaml config -q || fail "docker-compose rejects docker/compose.yaml"
  c=$(docker-compose -f docker/compose.yaml config)
  for want in "condition: service_healthy" "restart: unless-stopped" "hub_secrets_key" \
      "HUB_SECRETS__KEY_FILES__K1" "stop_grace_period"; do
    grep -q "$want" <<<"$c" || fail "docker/compose.yaml lacks $want"
  done
  pass "docker-compose accepts docker/compose.yaml (health conditions, restarts, secrets key)"
else
  log "docker-compose is not installed: docker/compose.yaml not validated"
fi

# --- a Debian base image from Debian's packages (cached as $BASE) -------------------------
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null 2>&1 || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  log "making $BASE with debootstrap (about a minute, done once)"
  debootstrap --variant=minbase bookworm "$SCRATCH/rootfs" >"$SCRATCH/debootstrap.log" 2>&1 \
    || { tail -n 20 "$SCRATCH/debootstrap.log" >&2; fail "debootstrap"; }
  tar -C "$SCRATCH/rootfs" -c . | docker import - "$BASE" >/dev/null
  rm -rf "$SCRATCH/rootfs"
fi

# --- the runtime image around the host's binary -------------------------------------------
mkdir -p "$SCRATCH/context"
# the debug build's symbols are most of its size; the image needs none of them
objcopy --strip-debug "$BIN" "$SCRATCH/context/fhir-hub" 2>/dev/null || cp "$BIN" "$SCRATCH/context/fhir-hub"
log "building $IMAGE on $BASE"
previous=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
DOCKER_BUILDKIT=0 docker build -q -f docker/Dockerfile.local --build-arg "BASE=$BASE" -t "$IMAGE" \
  "$SCRATCH/context" >"$SCRATCH/build.log" 2>&1 || { cat "$SCRATCH/build.log" >&2; fail "docker build"; }
# the image of the previous run, now untagged (its base and package layers stay cached)
now=$(docker image inspect -f '{{.Id}}' "$IMAGE")
[ -n "$previous" ] && [ "$previous" != "$now" ] && docker rmi "$previous" >/dev/null 2>&1 || true
version=$(docker run --rm "$IMAGE" --version) || fail "the binary does not run in the image"
pass "the binary runs in the image ($version)"

# --- .dockerignore keeps data, keys and build output out of the build context --------------
ctx="$SCRATCH/ignore-context"
mkdir -p "$ctx/target/debug" "$ctx/data" "$ctx/services/hub/data" "$ctx/services/hub/src" "$ctx/.cargo" "$ctx/docker"
cp .dockerignore "$ctx/"
for f in target/debug/fhir-hub data/hub.db data/secrets.key services/hub/data/log.db secrets.key \
    config.toml tls.pem hub.db-wal docker/secrets_key \
    Cargo.toml Cargo.lock .cargo/config.toml services/hub/src/main.rs config.default.toml; do
  echo x >"$ctx/$f"
done
printf 'ARG BASE\nFROM ${BASE}\nCOPY . /ctx\n' >"$SCRATCH/Dockerfile.ctx"
DOCKER_BUILDKIT=0 docker build -q -t "$RUN_ID-ctx" --build-arg "BASE=$BASE" -f "$SCRATCH/Dockerfile.ctx" "$ctx" \
  >"$SCRATCH/build.log" 2>&1 || { cat "$SCRATCH/build.log" >&2; fail "building the context probe"; }
seen=$(docker run --rm --entrypoint sh "$RUN_ID-ctx" -c 'cd /ctx && find . -type f | sort | tr "\n" " "')
docker rmi "$RUN_ID-ctx" >/dev/null
[ "$seen" = "./.cargo/config.toml ./.dockerignore ./Cargo.lock ./Cargo.toml ./config.default.toml ./services/hub/src/main.rs " ] \
  || fail ".dockerignore lets through: $seen"
pass ".dockerignore keeps data, secrets.key, config.toml, keys and target/ out of the build context"

docker network create "$NET" >/dev/null
docker volume create "$VOL" >/dev/null

# --- refuses open mode on 0.0.0.0 ---------------------------------------------------------
if out=$(docker run --rm --name "$RUN_ID-open" -e HUB_AUTH__MODE=open "$IMAGE" 2>&1); then
  fail "the hub started in open mode on 0.0.0.0"
fi
grep -q 'auth.mode is "open"' <<<"$out" || fail "open mode refused without the reason: $out"
pass "open mode on 0.0.0.0 is refused"

# --- serves as non-root with a key made in the container ----------------------------------
start_hub() { # name, extra docker args...
  local name=$1; shift
  docker run -d --name "$name" --network "$NET" -p 127.0.0.1::8080 -p 127.0.0.1::8081 -p 127.0.0.1::9464 "$@" "$IMAGE" >/dev/null
}
port_of() { docker port "$1" "$2/tcp" | head -n1 | sed 's/.*://'; }
wait_healthy() { # name
  local s=""
  for _ in $(seq 1 120); do
    s=$(docker inspect -f '{{.State.Health.Status}}' "$1" 2>/dev/null || echo gone)
    case "$s" in healthy) return 0 ;; unhealthy | gone) break ;; esac
    [ "$(docker inspect -f '{{.State.Running}}' "$1")" = true ] || break
    sleep 1
  done
  fail "$1 did not become healthy (health: $s)"
}
http() { # method url token [body] → prints status code, body in $SCRATCH/body
  local args=(-s -o "$SCRATCH/body" -w '%{http_code}' -X "$1" "$2")
  [ -n "$3" ] && args+=(-H "Authorization: Bearer $3")
  [ -n "${4:-}" ] && args+=(-H 'Content-Type: application/fhir+json' --data-binary "$4")
  curl "${args[@]}"
}
SUB='{"resourceType":"Subscription","status":"requested","reason":"container test",
 "criteria":"Observation?code=http://loinc.org|2345-7",
 "channel":{"type":"rest-hook","payload":"application/fhir+json",
  "_type":{"extension":[{"url":"http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-channel-type",
   "valueCoding":{"system":"urn:fhir-hub:channel-type","code":"sse"}}]}}}'

HUB="$RUN_ID-hub"
start_hub "$HUB" -v "$VOL:/var/lib/fhir-hub/data"
uid=$(docker exec "$HUB" sh -c 'awk "/^Uid:/ {print \$2}" /proc/1/status')
[ "$uid" != 0 ] && [ -n "$uid" ] || fail "the hub runs as uid '$uid'"
pass "serves as a non-root user (uid $uid)"
wait_healthy "$HUB"
pass "HEALTHCHECK (fhir-hub health --ready) turns healthy"
grep -q 'server.base_url is not set' <<<"$(logs_of "$HUB")" \
  || fail "no warning about the 0.0.0.0 base URL"
pass "warns at start that server.base_url is not set"
grep -q 'grpc listening on 0.0.0.0:8081' <<<"$(logs_of "$HUB")" || fail "gRPC is not on 0.0.0.0"
TOKEN=$(docker exec "$HUB" fhir-hub keys create --tenant default --name container-test \
  --scope 'system/Subscription.cruds system/Observation.rs hub/admin' 2>/dev/null) || fail "keys create"
API="http://127.0.0.1:$(port_of "$HUB" 8080)"
[ "$(http GET "$API/fhir/Subscription" "")" = 401 ] || fail "an anonymous request was not refused"
code=$(http POST "$API/fhir/Subscription" "$TOKEN" "$SUB")
[ "$code" = 201 ] || fail "creating a subscription with the key: $code $(cat "$SCRATCH/body")"
SUB_ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$SCRATCH/body")
pass "serves with a key made by 'fhir-hub keys create' in the container (401 without it)"
grpc="http://127.0.0.1:$(port_of "$HUB" 8081)/grpc.health.v1.Health/Check"
code=$(printf '\0\0\0\0\0' | curl -s -o /dev/null -w '%{http_code}' --http2-prior-knowledge \
  -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @- "$grpc" || true)
[ "$code" = 200 ] || fail "the gRPC listener does not answer from outside the container ($code)"
pass "the gRPC listener answers from outside the container"
ADMIN="http://127.0.0.1:$(port_of "$HUB" 9464)"
code=$(curl -s -o "$SCRATCH/metrics" -w '%{http_code}' "$ADMIN/metrics" || true)
[ "$code" = 200 ] && grep -q '^fhir_hub_http_request_duration_seconds_count' "$SCRATCH/metrics" \
  || fail "the admin listener's /metrics does not answer from outside the container ($code)"
pass "the admin listener (9464) serves this process's metrics from outside the container"

# --- SIGTERM drains; the volume outlives the container -------------------------------------
docker stop -t 60 "$HUB" >/dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' "$HUB")" = 0 ] \
  || fail "exit code $(docker inspect -f '{{.State.ExitCode}}' "$HUB") after SIGTERM"
grep -q 'drained' <<<"$(logs_of "$HUB")" || fail "no drain line after SIGTERM"
pass "SIGTERM drains: exit code 0 and a 'drained' log line"
docker rm "$HUB" >/dev/null
HUB2="$RUN_ID-hub2"
start_hub "$HUB2" -v "$VOL:/var/lib/fhir-hub/data"
wait_healthy "$HUB2"
API="http://127.0.0.1:$(port_of "$HUB2" 8080)"
code=$(http GET "$API/fhir/Subscription/$SUB_ID" "$TOKEN")
[ "$code" = 200 ] || fail "after a new container on the same volume: $code $(cat "$SCRATCH/body")"
pass "a new container on the same volume keeps the key and the subscription"
docker rm -f "$HUB2" >/dev/null

# --- with PostgreSQL, and the secrets key from a mounted file ------------------------------
log "building $PG_IMAGE (PostgreSQL from Debian's packages on $BASE)"
DOCKER_BUILDKIT=0 docker build -q -t "$PG_IMAGE" --build-arg "BASE=$BASE" - >"$SCRATCH/build.log" 2>&1 <<'EOF' \
  || { cat "$SCRATCH/build.log" >&2; fail "building the PostgreSQL image"; }
ARG BASE
FROM ${BASE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/*
USER postgres
RUN /usr/lib/postgresql/15/bin/initdb -D /var/lib/postgresql/db -U hub --auth=trust >/dev/null \
    && echo "host all all 0.0.0.0/0 trust" >> /var/lib/postgresql/db/pg_hba.conf
HEALTHCHECK --interval=2s --timeout=3s --retries=30 CMD ["pg_isready", "-h", "127.0.0.1", "-U", "hub", "-d", "postgres"]
CMD ["/usr/lib/postgresql/15/bin/postgres", "-D", "/var/lib/postgresql/db", "-c", "listen_addresses=*", "-k", "/tmp"]
EOF
PG="$RUN_ID-postgres"
docker run -d --name "$PG" --network "$NET" --network-alias postgres "$PG_IMAGE" >/dev/null
wait_healthy "$PG"
docker exec "$PG" psql -qh 127.0.0.1 -U hub -d postgres -c 'CREATE DATABASE hub' >/dev/null
head -c 32 /dev/urandom | base64 >"$SCRATCH/secrets_key"
head -c 32 /dev/urandom | base64 >"$SCRATCH/other_key"
chmod 644 "$SCRATCH/secrets_key" "$SCRATCH/other_key"
pg_env=(-e HUB_DATABASE__URL=postgres://hub@postgres:5432/hub -e HUB_SECRETS__ACTIVE=k1
  -e HUB_SECRETS__KEY_FILES__K1=/run/secrets/hub_secrets_key -e HUB_SERVER__BASE_URL=http://hub.test/fhir)
HUBP="$RUN_ID-hub-pg"
start_hub "$HUBP" "${pg_env[@]}" -v "$SCRATCH/secrets_key:/run/secrets/hub_secrets_key:ro"
wait_healthy "$HUBP"
grep -q 'stored unsealed' <<<"$(logs_of "$HUBP")" && fail "secrets are stored unsealed"
grep -q 'server.base_url is not set' <<<"$(logs_of "$HUBP")" && fail "warned with a base URL set"
TOKEN=$(docker exec "$HUBP" fhir-hub keys create --tenant default --name pg \
  --scope 'system/Subscription.cruds system/Observation.rs hub/admin' 2>/dev/null) || fail "keys create on PostgreSQL"
API="http://127.0.0.1:$(port_of "$HUBP" 8080)"
code=$(http POST "$API/fhir/Subscription" "$TOKEN" "$SUB")
[ "$code" = 201 ] || fail "creating a subscription on PostgreSQL: $code $(cat "$SCRATCH/body")"
n=$(docker exec "$PG" psql -tAqh 127.0.0.1 -U hub -d hub -c 'SELECT count(*) FROM subscriptions')
[ "$n" -ge 1 ] || fail "no subscription row in PostgreSQL ($n)"
pass "serves on PostgreSQL in another container, healthy, secrets key from a mounted file"
docker stop -t 60 "$HUBP" >/dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' "$HUBP")" = 0 ] || fail "the PostgreSQL hub did not stop cleanly"
docker rm "$HUBP" >/dev/null
if out=$(docker run --rm --name "$RUN_ID-wrong-key" --network "$NET" "${pg_env[@]}" \
    -v "$SCRATCH/other_key:/run/secrets/hub_secrets_key:ro" "$IMAGE" 2>&1); then
  fail "started with another key under the recorded id"
fi
grep -qi 'key' <<<"$out" || fail "refused without naming the key: $out"
pass "another secrets key under the same id is refused at start (the file's key was recorded)"

echo "container test: $PASSED passed"
