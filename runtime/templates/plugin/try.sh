#!/usr/bin/env bash
# Tries the {{name}} plugin ({{lang}}) end to end, the way a line writes a device:
# builds the plugin, checks it, makes a throw-away CA with a device-link and a
# line credential and one pack for {{model}}-000001, runs device.py under the
# simulator, and writes the pack with `certline plugin try` (extra arguments
# go to it, e.g. --trace). Needs certline on PATH or in $CERTLINE.
set -euo pipefail
cd "$(dirname "$0")"
here=$PWD
certline=${CERTLINE:-certline}
export CERTLINE_PASSPHRASE=${CERTLINE_PASSPHRASE:-"try.sh passphrase, not for production"}
work=$(mktemp -d)
sim=
cleanup() {
    if [ -n "$sim" ]; then kill "$sim" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

{{build}}
"$certline" plugin check "$wasm"

"$certline" ca init --dir "$work/ca" >/dev/null
"$certline" ca enroll --dir "$work/ca" --role device-link --name {{name}}-boards --out "$work/device-link.pem" >/dev/null
"$certline" ca enroll --dir "$work/ca" --role line --name try-line --out "$work/line.pem" >/dev/null
echo {{model}}-000001 >"$work/ids.txt"
"$certline" ca issue --dir "$work/ca" --ids "$work/ids.txt" --out "$work/packs" >/dev/null

"$certline" device-sim --dir "$work/device" --model {{model}} --serial 000001 \
    --credential "$work/device-link.pem" --listen 127.0.0.1:0 \
    --exec "python3 $here/device.py" >"$work/addr" 2>"$work/device.log" &
sim=$!
for _ in $(seq 100); do [ -s "$work/addr" ] && break; sleep 0.1; done
if [ ! -s "$work/addr" ]; then cat "$work/device.log" >&2; exit 1; fi

if ! "$certline" plugin try --plugin "$wasm" --device "$(head -1 "$work/addr")" \
    --pack "$work/packs/{{model}}-000001" --credential "$work/line.pem" "$@"; then
    echo "--- the device's log:" >&2
    cat "$work/device.log" >&2
    exit 1
fi
