#!/usr/bin/env bash
# SoftHSM2 (a PKCS#11 token in files) and opensc's pkcs11-tool: the CA's key
# store tests make a token per test under a temporary SOFTHSM2_CONF and look at
# it from outside (keys sensitive, not extractable).
set -euo pipefail
if ! command -v softhsm2-util >/dev/null || ! command -v pkcs11-tool >/dev/null \
    || [ ! -e /usr/lib/softhsm/libsofthsm2.so ]; then
    apt-get update -qq && apt-get install -y -qq softhsm2 opensc
fi
