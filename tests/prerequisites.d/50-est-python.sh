#!/usr/bin/env bash
# The EST tests (tests/est.rs) drive the CA with clients certline did not write:
# curl for the transport, and a Python client (tests/est_client.py) built on
# `cryptography` and `requests`.
set -euo pipefail
if ! command -v curl >/dev/null; then
    apt-get update -qq && apt-get install -y -qq curl
fi
if ! python3 -c 'import cryptography, requests' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore cryptography requests
fi
