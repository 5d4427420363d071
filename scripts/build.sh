#!/usr/bin/env bash
# Builds the one release binary, target/x86_64-unknown-linux-musl/release/herald: a static
# x86_64 Linux executable with the console's assets inside. Every script and every
# artifact (image, .deb) uses this build.
#   1. the hydrate bundle: cargo build --target wasm32-unknown-unknown --profile wasm-release
#      -p frontend, then wasm-bindgen --target web, then wasm-opt -Oz (skipped when the
#      bundle did not change: its result is kept by content hash in target/wasm-opt-cache)
#   2. the server, which embeds the bundle, the stylesheet and public/ (server/build.rs)
# Files in target/site are replaced only when their content changes, so a build with
# nothing changed relinks nothing and takes seconds.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
ensure_rust
npm_ci "$ROOT/tools"
build_release
