#!/usr/bin/env bash
# Sets up and starts Herald for the demo: PostgreSQL database `herald`, the maildev SMTP
# server with its web inbox (http://127.0.0.1:1080), a development OpenID Connect
# provider for console login (http://127.0.0.1:3001; users admin, alice, bob, any
# password), a demo API key, and `herald serve` on http://127.0.0.1:3000. Ctrl-C stops
# Herald, maildev and the provider. With HERALD_OIDC_ISSUER set, no provider is started
# and Herald uses yours.
# `./scripts/demo.sh --kafka` runs the same demo on the Kafka bus, with a local
# Kafka-protocol broker (nisshi) on 127.0.0.1:9092 keeping its log in PostgreSQL.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
USE_KAFKA=0
[ "${1:-}" = "--kafka" ] && USE_KAFKA=1

apt_install curl postgresql-client
ensure_rust
npm_ci "$ROOT/tools"
ensure_postgres
ensure_database herald
[ $USE_KAFKA = 1 ] && { ensure_nisshi; ensure_database herald_broker; }
build_release

export DATABASE_URL="${DATABASE_URL:-$PG_ADMIN_URL/herald}"
export HERALD_SMTP_URL="${HERALD_SMTP_URL:-smtp://127.0.0.1:1025}"
export HERALD_EMAIL_FROM="${HERALD_EMAIL_FROM:-Herald Demo <herald@localhost>}"
HERALD="$HERALD_BIN"
STATE="$ROOT/.herald"
mkdir -p "$STATE"
# HERALD_SECRET_KEY seals webhook signing secrets at rest; the demo keeps one in .herald/.
if [ -z "${HERALD_SECRET_KEY:-}" ]; then
  if [ ! -s "$STATE/secret-key" ]; then
    (umask 077; python3 -c 'import secrets; print(secrets.token_hex(32))' >"$STATE/secret-key")
  fi
  export HERALD_SECRET_KEY="$(cat "$STATE/secret-key")"
fi
# The demo lets webhooks reach receivers on this machine (127.0.0.1). A real
# deployment leaves this unset: the SSRF guard then refuses every non-global address.
export HERALD_WEBHOOK_ALLOW_CIDRS="${HERALD_WEBHOOK_ALLOW_CIDRS-127.0.0.1/32}"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

if ! curl -fsS -o /dev/null http://127.0.0.1:1080/api/healthz 2>/dev/null; then
  log "starting maildev (SMTP 127.0.0.1:1025, inbox http://127.0.0.1:1080)"
  maildev --smtp 1025 --web 1080 --ip 127.0.0.1 --web-ip 127.0.0.1 >"$STATE/maildev.log" 2>&1 &
  PIDS+=($!)
  wait_http http://127.0.0.1:1080/api/healthz 30 || die "maildev did not start; see $STATE/maildev.log"
fi

if [ -z "${HERALD_OIDC_ISSUER:-}" ]; then
  if ! curl -fsS -o /dev/null http://127.0.0.1:3001/.well-known/openid-configuration 2>/dev/null; then
    log "starting the development OIDC provider (http://127.0.0.1:3001; users admin, alice, bob)"
    start_oidc_provider 3001 http://127.0.0.1:3000 "$STATE/oidc.log"
    PIDS+=($OIDC_PID)
  fi
  export HERALD_OIDC_ISSUER=http://127.0.0.1:3001 HERALD_OIDC_CLIENT_ID=herald HERALD_OIDC_CLIENT_SECRET=herald-dev-secret
  export HERALD_OIDC_SCOPES="openid email profile groups" HERALD_OIDC_TEAM_CLAIM=team HERALD_OIDC_AUDIENCE=urn:herald:api
fi

if [ $USE_KAFKA = 1 ]; then
  if ! (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; then
    log "starting nisshi (Kafka protocol on 127.0.0.1:9092, log in database herald_broker)"
    nisshi broker --storage-engine "$PG_ADMIN_URL/herald_broker?sslmode=disable" \
      --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
      --group-initial-rebalance-delay 0s >"$STATE/nisshi.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 30); do (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break; sleep 1; done
  fi
  export HERALD_BUS=kafka HERALD_KAFKA_BROKERS=127.0.0.1:9092
fi

"$HERALD" migrate >/dev/null
if [ ! -s "$STATE/demo-api-key" ]; then
  "$HERALD" api-key create --name demo --scope notifications:write --scope notifications:read \
    --scope endpoints:read --scope endpoints:write | tail -n 1 >"$STATE/demo-api-key"
fi
KEY="$(cat "$STATE/demo-api-key")"

cat <<MSG

  Herald is starting on http://127.0.0.1:3000 (console), inbox at http://127.0.0.1:1080
  Console login (development provider): admin (an admin), alice or bob (webhook owners), any password
  Demo API key (also in .herald/demo-api-key): $KEY

  Send the welcome email:
    curl -s -X POST http://127.0.0.1:3000/api/v1/notifications \\
      -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
      -d '{"event_type":"user.registered","payload":{"user":{"name":"Ada","email":"ada@example.test"}}}'

  Subscribe a webhook endpoint to it first (the answer holds its whsec_ signing secret):
    curl -s -X POST http://127.0.0.1:3000/api/v1/endpoints \\
      -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
      -d '{"url":"http://127.0.0.1:9000/hooks","event_types":["user.*"]}'

MSG
"$HERALD" serve
