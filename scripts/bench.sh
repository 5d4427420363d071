#!/usr/bin/env bash
# Herald's benchmark matrix (prints figures, asserts nothing):
#   1. pgbench: PostgreSQL's commit rate on this machine (two small inserts per
#      transaction, synchronous_commit on, 64 clients): the ingest ceiling's yardstick;
#   2. herald-bench, webhooks only (one endpoint on a receiver in the bench process), at
#      4, 16, 64 and 256 concurrent requests, on the PostgreSQL bus and on Kafka (nisshi,
#      in memory): accepted/s, accept p50/p99, delivered/s, end-to-end p50/p99, RSS;
#   3. a soak of BENCH_SOAK (100,000) notifications at 64 concurrent requests: RSS at
#      the start, peak and end.
# Usage: scripts/bench.sh [herald binary]   (default: this tree's shipped static build)
# BENCH_CONCURRENCY="4 16 64 256", BENCH_BUSES="postgres kafka", BENCH_SOAK=100000 (0: none).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_rust
ensure_postgres
BUSES="${BENCH_BUSES:-postgres kafka}"
case " $BUSES " in *" kafka "*) ensure_nisshi ;; esac
npm_ci "$ROOT/tools"
build_release   # the shipped static binary
log "building herald-bench (release)"
cargo build --release -q -p herald-testkit --bin herald-bench
HERALD="${1:-$HERALD_BIN}"
BENCH="$ROOT/target/release/herald-bench"
OUT="$(mktemp -d)"

log "pgbench: two small inserts per transaction, 64 clients, 15 s"
DB=herald_pgbench
psql "$PG_ADMIN_URL/postgres" -qc "DROP DATABASE IF EXISTS $DB" -qc "CREATE DATABASE $DB"
psql "$PG_ADMIN_URL/$DB" -qc "CREATE TABLE a (id bigserial PRIMARY KEY, v text NOT NULL); CREATE TABLE b (id bigserial PRIMARY KEY, v text NOT NULL)"
cat >"$OUT/two_inserts.sql" <<'SQL'
BEGIN;
INSERT INTO a (v) VALUES ('notification');
INSERT INTO b (v) VALUES ('delivery');
END;
SQL
PGBENCH="$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench | sort -V | tail -n 1)"
"$PGBENCH" -n -c 64 -j 2 -T 15 -f "$OUT/two_inserts.sql" "$PG_ADMIN_URL/$DB" >"$OUT/pgbench.txt" 2>&1
PG_TPS=$(grep -o 'tps = [0-9.]*' "$OUT/pgbench.txt" | head -n 1 | grep -o '[0-9.]*$')
psql "$PG_ADMIN_URL/postgres" -qc "DROP DATABASE IF EXISTS $DB"
echo "pgbench: $PG_TPS transactions/s"

notifications_for() { case "$1" in 4) echo 2000 ;; 16) echo 5000 ;; 64) echo 10000 ;; *) echo 20000 ;; esac; }
for bus in $BUSES; do
  for c in ${BENCH_CONCURRENCY:-4 16 64 256}; do
    flags=(--herald "$HERALD" --no-email --endpoints 1 --concurrency "$c" --notifications "$(notifications_for "$c")")
    [ "$bus" = kafka ] && flags+=(--kafka)
    log "herald-bench: $bus bus, c=$c"
    "$BENCH" "${flags[@]}" | tee "$OUT/run.txt"
    grep '^summary:' "$OUT/run.txt" >>"$OUT/summaries.txt"
  done
done

if [ "${BENCH_SOAK:-100000}" != 0 ]; then
  log "soak: ${BENCH_SOAK:-100000} notifications, c=64, PostgreSQL bus"
  "$BENCH" --herald "$HERALD" --no-email --endpoints 1 --concurrency 64 --notifications "${BENCH_SOAK:-100000}" | tee "$OUT/soak.txt"
fi

echo
echo "## Herald benchmark, $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -m)"
echo
echo "pgbench (two inserts per transaction, 64 clients): $PG_TPS commits/s"
echo
echo "| bus | c | accepted/s | accept p50 / p99 ms | delivered/s | end-to-end p50 / p99 ms | RSS idle / peak / end MiB | accepted/s ÷ pgbench |"
echo "|---|---|---|---|---|---|---|---|"
python3 - "$OUT/summaries.txt" "$PG_TPS" <<'PY'
import sys
tps = float(sys.argv[2] or 0)
for line in open(sys.argv[1]):
    f = dict(kv.split("=", 1) for kv in line.split()[1:])
    ratio = f"{float(f['accepted_per_s']) / tps:.0%}" if tps else "-"
    print(f"| {f['bus']} | {f['concurrency']} | {f['accepted_per_s']} | {f['accept_p50_ms']} / {f['accept_p99_ms']} | "
          f"{f['delivered_per_s']} | {f['e2e_p50_ms']} / {f['e2e_p99_ms']} | "
          f"{f['rss_idle_mib']} / {f['rss_peak_mib']} / {f['rss_end_mib']} | {ratio} |")
PY
if [ -f "$OUT/soak.txt" ]; then
  echo
  grep -E '^(memory|summary):' "$OUT/soak.txt"
fi
rm -rf "$OUT"
