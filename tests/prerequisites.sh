#!/usr/bin/env bash
# Everything the test suite needs beyond the Rust toolchain, installed if missing.
# Each need lives in its own script under tests/prerequisites.d/ (run in name
# order), so a new outside tool is one new file, and each script says why the
# tests need what it installs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/../plugins/build.sh"
for step in "$here"/prerequisites.d/*.sh; do
    bash "$step"
done
