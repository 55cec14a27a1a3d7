#!/usr/bin/env bash
# What building the hub needs beyond Rust and a C compiler: the bundled librdkafka is built
# with OpenSSL (TLS and SASL to Kafka), so OpenSSL's headers and pkg-config. Installs them
# (Debian packages) when missing; does nothing otherwise.
set -euo pipefail
if ! pkg-config --exists openssl 2>/dev/null; then
  echo "installing OpenSSL headers and pkg-config (Debian packages libssl-dev, pkg-config)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev pkg-config >/dev/null
fi
