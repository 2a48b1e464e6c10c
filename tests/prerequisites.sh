#!/usr/bin/env bash
# Everything the test suite needs beyond the Rust toolchain, installed if missing:
# the example plugins (and the wasm target), openssl (an independent certificate
# checker) and pkilint (an RFC 5280 linter).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/../plugins/build.sh"
if ! command -v openssl >/dev/null; then
    apt-get update -qq && apt-get install -y -qq openssl
fi
if ! command -v lint_pkix_cert >/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore pkilint
fi
