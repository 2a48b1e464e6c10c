#!/usr/bin/env bash
# Builds the example device plugins (WASM components) from source, installing
# the wasm32-wasip2 target first: a fresh machine has only the host target.
# The components land in plugins/target/wasm32-wasip2/release/*.wasm.
set -euo pipefail
cd "$(dirname "$0")"
# The components must land here, whatever target directory the caller builds in.
unset CARGO_TARGET_DIR
rustup target add wasm32-wasip2
cargo build --release --target wasm32-wasip2
