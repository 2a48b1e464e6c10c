#!/usr/bin/env bash
# componentize-py: the plugin guide's Python path (`certline plugin new --lang
# python`) is built by a test (tests/plugin_guide.rs), with this pinned version
# so a new release cannot change what the guide promises.
set -euo pipefail
version=0.25.1
if [ "$(componentize-py --version 2>/dev/null | awk '{print $2}')" != "$version" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        "componentize-py==$version"
fi
