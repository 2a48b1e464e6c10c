#!/usr/bin/env bash
# Chromium and playwright-core: the station console's browser test drives
# Debian's headless Chromium (never a browser downloaded by a test tool) with the
# Playwright version pinned in tests/console/package-lock.json.
set -euo pipefail
if ! command -v chromium >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
here="$(cd "$(dirname "$0")/../console" && pwd)"
if [ ! -d "$here/node_modules/playwright-core" ]; then
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi
