#!/usr/bin/env bash
# openssl: the independent certificate checker the tests compare our output with
# (`openssl verify`, `x509`, `crl`).
set -euo pipefail
if ! command -v openssl >/dev/null; then
    apt-get update -qq && apt-get install -y -qq openssl
fi
