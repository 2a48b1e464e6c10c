#!/usr/bin/env bash
# pkilint: an RFC 5280 linter run over every certificate and CRL profile we issue.
set -euo pipefail
if ! command -v lint_pkix_cert >/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore pkilint
fi
