#!/usr/bin/env bash
# Sets up everything the tests need (once) and runs the whole test suite:
# unit tests, integration tests against real PostgreSQL/SMTP/HTTP, and the browser tests.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

apt_install chromium curl openssl postgresql-client podman runc docker-compose systemd
ensure_rust
ensure_nisshi
npm_ci "$ROOT/tools"
npm_ci "$ROOT/end2end"
ensure_postgres

# Each integration test creates its own database; drop those a previous run left behind.
for db in $(psql "$PG_ADMIN_URL/postgres" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'herald\_test\_%'"); do
  psql "$PG_ADMIN_URL/postgres" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
done

log "format and lint (cargo fmt --check, cargo clippy -D warnings)"
cargo fmt --all --check || die "the tree is not formatted: run cargo fmt --all"
cargo clippy --workspace --all-targets --quiet -- -D warnings

build_release

ensure_python_tools
log "unit and integration tests"
cargo test -p herald-core -p herald-server

log "browser tests (headless Chromium)"
E2E_DB="herald_e2e_$$"
psql "$PG_ADMIN_URL/postgres" -qc "DROP DATABASE IF EXISTS $E2E_DB" && psql "$PG_ADMIN_URL/postgres" -qc "CREATE DATABASE $E2E_DB"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
OIDC_PORT=$(free_port)
start_oidc_provider "$OIDC_PORT" "http://127.0.0.1:$PORT" "$ROOT/target/e2e-oidc.log"
HERALD_SECRET_KEY="$(python3 -c 'import secrets; print(secrets.token_hex(32))')" \
DATABASE_URL="$PG_ADMIN_URL/$E2E_DB" HERALD_SMTP_URL="smtp://127.0.0.1:1" HERALD_LISTEN_ADDR="127.0.0.1:$PORT" HERALD_WEBHOOK_ALLOW_CIDRS="127.0.0.1/32" \
  HERALD_OIDC_ISSUER="http://127.0.0.1:$OIDC_PORT" HERALD_OIDC_CLIENT_ID=herald HERALD_OIDC_CLIENT_SECRET=herald-dev-secret \
  HERALD_OIDC_SCOPES="openid email profile groups" HERALD_OIDC_TEAM_CLAIM=team \
  bash -c 'cd "$(mktemp -d)" && exec "$0" serve' "$HERALD_BIN" &  # from an empty directory: the console is inside
HERALD_PID=$!
trap 'kill $HERALD_PID $OIDC_PID 2>/dev/null || true; psql "$PG_ADMIN_URL/postgres" -qc "DROP DATABASE IF EXISTS $E2E_DB" >/dev/null 2>&1 || true' EXIT
wait_http "http://127.0.0.1:$PORT/healthz" 60 || die "herald did not start for the browser tests"
(cd end2end && HERALD_E2E_URL="http://127.0.0.1:$PORT" npm test)
kill $HERALD_PID 2>/dev/null || true

log "artifacts: the static binary, the container image, the Debian package, the compose file"
"$ROOT/scripts/package.sh" --image
"$ROOT/tools/.venv/bin/python" "$ROOT/tools/artifacts/test_artifacts.py"

log "all tests passed"
