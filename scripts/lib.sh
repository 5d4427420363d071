# Shared helpers for Herald's scripts. Sourced, not run.
# Every step checks first and installs only what is missing, so a second run is quick.

set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$ROOT/tools/node_modules/.bin:$PATH"

WASM_BINDGEN_VERSION=0.2.130
PG_ADMIN_URL="${HERALD_PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432}"

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
    || { as_root apt-get update -q && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; }
}

ensure_rust() {
  command -v cargo >/dev/null || die "cargo is missing: install Rust 1.95+ with rustup first"
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    log "adding the rustfmt and clippy components"
    rustup component add rustfmt clippy
  fi
  local t
  for t in wasm32-unknown-unknown "$RELEASE_TARGET"; do
    if ! rustup target list --installed | grep -qx "$t"; then
      log "adding the $t target"
      rustup target add "$t"
    fi
  done
  # The static build compiles its C parts (librdkafka, zlib, ring, mimalloc) with musl-gcc.
  apt_install musl-tools
  if ! wasm-bindgen --version 2>/dev/null | grep -q "$WASM_BINDGEN_VERSION"; then
    log "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION (about 3 minutes once)"
    # Not --locked: its lock file names a webpki-roots release the registry no longer serves.
    cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
  fi
}

NISSHI_VERSION=0.8.1

# The Kafka-protocol broker for tests and the Kafka demo (nisshi, the renamed Tansu).
# It needs rustc >= 1.96: built with the image's nightly, or a minimal 1.96 toolchain.
ensure_nisshi() {
  if nisshi --version 2>/dev/null | grep -q "$NISSHI_VERSION"; then return 0; fi
  local tc
  if rustup toolchain list | grep -q '^nightly'; then tc=nightly; else
    log "installing Rust 1.96.0 (minimal) to build nisshi"
    rustup toolchain install 1.96.0 --profile minimal
    tc=1.96.0
  fi
  log "installing nisshi $NISSHI_VERSION with +$tc (a Kafka-protocol broker; ~10 minutes once)"
  cargo +"$tc" install nisshi --version "$NISSHI_VERSION" --locked
}

npm_ci() { # npm_ci DIR: installs DIR's locked npm packages unless they are already there
  local dir="$1"
  command -v npm >/dev/null || apt_install nodejs npm
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    log "installing npm packages in ${dir#$ROOT/}"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

ensure_postgres() {
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    log "starting PostgreSQL"
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
    pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL is not answering on 127.0.0.1:5432"
  fi
}

ensure_database() { # ensure_database NAME
  if ! psql "$PG_ADMIN_URL/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$1'" | grep -q 1; then
    log "creating database $1"
    psql "$PG_ADMIN_URL/postgres" -qc "CREATE DATABASE \"$1\""
  fi
}

RELEASE_TARGET=x86_64-unknown-linux-musl
# The one release binary every script, test and artifact uses.
HERALD_BIN="$ROOT/target/$RELEASE_TARGET/release/herald"

install_if_changed() { # install_if_changed SRC DEST: keeps DEST (and its mtime) when equal
  cmp -s "$1" "$2" 2>/dev/null || { mkdir -p "$(dirname "$2")" && cp "$1" "$2.tmp" && mv "$2.tmp" "$2"; }
}

build_bundle() { # the console's hydrate bundle into target/site/pkg (see scripts/build.sh)
  log "building the console bundle (wasm32, wasm-bindgen, wasm-opt)"
  (cd "$ROOT" && cargo build --quiet --target wasm32-unknown-unknown --profile wasm-release -p frontend)
  local raw="$ROOT/target/wasm32-unknown-unknown/wasm-release/frontend.wasm"
  local gen="$ROOT/target/wasm-bindgen"
  rm -rf "$gen" && mkdir -p "$gen"
  wasm-bindgen --target web --no-typescript --out-name herald --out-dir "$gen" "$raw"
  # wasm-opt takes minutes; its output is kept by the hash of its input.
  local key cache="$ROOT/target/wasm-opt-cache"
  key="$(sha256sum "$gen/herald_bg.wasm" | cut -c1-32)"
  if [ ! -s "$cache/$key.wasm" ]; then
    log "optimising the bundle (wasm-opt -Oz)"
    mkdir -p "$cache"
    find "$cache" -name '*.wasm' -mtime +7 -delete
    wasm-opt -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
      --enable-mutable-globals --enable-reference-types --enable-multivalue \
      -o "$cache/$key.wasm.tmp" "$gen/herald_bg.wasm"
    mv "$cache/$key.wasm.tmp" "$cache/$key.wasm"
  fi
  local site="$ROOT/target/site"
  install_if_changed "$cache/$key.wasm" "$site/pkg/herald_bg.wasm"
  install_if_changed "$gen/herald.js" "$site/pkg/herald.js"
  if [ -d "$gen/snippets" ]; then
    (cd "$gen" && find snippets -type f) | while read -r f; do install_if_changed "$gen/$f" "$site/pkg/$f"; done
  fi
  # The same layout `cargo leptos watch` makes, for HERALD_SITE_ROOT in development.
  install_if_changed "$ROOT/style/main.css" "$site/pkg/herald.css"
  for f in "$ROOT"/public/*; do [ -f "$f" ] && install_if_changed "$f" "$site/$(basename "$f")"; done
  return 0
}

build_release() {
  build_bundle
  log "building Herald (cargo build --release --target $RELEASE_TARGET)"
  (cd "$ROOT" && HERALD_WASM_DIR="$ROOT/target/site/pkg" cargo build --release --target "$RELEASE_TARGET" -p herald-server --bin herald)
  [ -x "$HERALD_BIN" ] || die "the build made no $HERALD_BIN"
}

start_oidc_provider() { # start_oidc_provider PORT HERALD_PUBLIC_URL LOGFILE: the dev/test OIDC provider, in the background
  OIDC_PORT="$1" HERALD_PUBLIC_URL="$2" node "$ROOT/tools/oidc/provider.mjs" >"$3" 2>&1 &
  OIDC_PID=$!
  wait_http "http://127.0.0.1:$1/.well-known/openid-configuration" 30 || die "the OIDC provider did not start; see $3"
}

wait_http() { # wait_http URL SECONDS
  for _ in $(seq 1 "$2"); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 1; done
  return 1
}

ensure_python_tools() { # the Python tools the tests use (tools/requirements.txt), in tools/.venv
  local venv="$ROOT/tools/.venv"
  if [ ! -x "$venv/bin/openapi-spec-validator" ] || [ "$ROOT/tools/requirements.txt" -nt "$venv/.installed" ]; then
    log "installing Python tools in tools/.venv"
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; }
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/tools/requirements.txt"
    touch "$venv/.installed"
  fi
}

# Podman as it runs on these machines (rootful, cgroup v1, no rlimit raising): runc and
# cgroupfs, and a containers.conf that sets no default ulimits.
podman_cmd() {
  command -v podman >/dev/null || apt_install podman runc
  local conf="$ROOT/target/containers.conf"
  [ -f "$conf" ] || { mkdir -p "$ROOT/target" && printf '[containers]\ndefault_ulimits = []\n' >"$conf"; }
  CONTAINERS_CONF="$conf" podman --runtime runc --cgroup-manager=cgroupfs "$@"
}
