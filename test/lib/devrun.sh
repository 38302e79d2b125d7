#!/usr/bin/env bash
# devrun.sh — what `make run` runs after building build/rel/paygated:
#
#   1. a private PostgreSQL (127.0.0.1:55432) and Redis (127.0.0.1:56379) in
#      ./var/services (kept between runs: a second `make run` has the data of
#      the first);
#   2. the channel simulators (start_simulators below);
#   3. build/rel/paygated migrate -c config/dev.json, then paygated in the
#      foreground (public API http://127.0.0.1:8080, admin :8081, token
#      dev-admin-token).
#
# Ctrl-C or SIGTERM stops paygated, the simulators and the services.
# Environment: PAYGATED_CONFIG (default config/dev.json), PAYGATED_BIN
# (default build/rel/paygated), VAR_DIR (default ./var).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
CONFIG=${PAYGATED_CONFIG:-config/dev.json}
BIN=${PAYGATED_BIN:-build/rel/paygated}
VAR=${VAR_DIR:-$ROOT/var}
SVC_DIR=$VAR/services
PG_PORT=55432
REDIS_PORT=56379
SERVICES="$ROOT/test/lib/services.sh"

PIDS=()          # simulators and the daemon, stopped in reverse order
DAEMON_PID=""
STOPPING=0

say() { echo "devrun: $*" >&2; }

# ---------------------------------------------------------------- simulators
# Channel simulators (node test/sim/*.js) are started here, each in the
# background with its pid appended to PIDS, e.g.
#   node test/sim/swiftpass.js --port 18001 > "$VAR/log/sim-swiftpass.log" 2>&1 &
#   PIDS+=($!)
# config/dev.json's channels.settings must point each channel at its
# simulator.  Nothing to start yet.
SWIFTPASS_SIM_PORT=18001
start_simulators() {
  mkdir -p "$VAR/log"
  # --- channel simulators go here ---
  say "starting the Swiftpass simulator on http://127.0.0.1:$SWIFTPASS_SIM_PORT (log: $VAR/log/sim-swiftpass.log)"
  node test/sim/swiftpass.js --port "$SWIFTPASS_SIM_PORT" --config config/sim/swiftpass.json \
    > "$VAR/log/sim-swiftpass.log" 2>&1 &
  PIDS+=($!)
}

# The sandbox's demo merchant (m1, secret "0123456789abcdef0123"), shop s1
# and its Swiftpass sub-merchants, bound for every payment method.  PUTs and
# upserts: a second `make run` changes nothing.
seed_sandbox() {
  local i adm="http://127.0.0.1:8081" auth="Authorization: Bearer dev-admin-token"
  for i in $(seq 1 100); do curl -sf "$adm/healthz" -H "$auth" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -sf -X PUT "$adm/admin/merchants/m1" -H "$auth" \
    -d '{"name":"Demo Tea House","secret":"0123456789abcdef0123"}' >/dev/null || { say "seeding failed"; return 0; }
  curl -sf -X PUT "$adm/admin/shops/s1" -H "$auth" -d '{"merchant_id":"m1","name":"Demo Tea House, West Lake"}' >/dev/null
  local ids="" mch id
  for mch in 755437000006 755437000007 755437000008; do
    id=$(curl -sf -X POST "$adm/admin/sub-merchants" -H "$auth" \
      -d "{\"channel\":\"swiftpass\",\"mch_id\":\"$mch\",\"key\":\"sandbox-md5-key-$mch\"}" |
      sed -n 's/.*"id":\([0-9]*\).*/\1/p')
    ids="$ids${ids:+,}$id"
  done
  for m in wechat_qr wechat_jsapi alipay_qr alipay_jsapi barcode; do
    curl -sf -X PUT "$adm/admin/shops/s1/bindings/$m" -H "$auth" \
      -d "[{\"channel\":\"swiftpass\",\"sub_merchant_ids\":[$ids]}]" >/dev/null
  done
  say "sandbox ready: merchant m1 (secret 0123456789abcdef0123), shop s1, Swiftpass sub-merchants $ids"
}

# ---------------------------------------------------------------- teardown
stop_all() {
  [ "$STOPPING" = 1 ] && return
  STOPPING=1
  local i pid
  if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    say "stopping paygated (pid $DAEMON_PID)"
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    for i in $(seq 1 150); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
  fi
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do
    pid=${PIDS[$i]}
    [ "$pid" = "$DAEMON_PID" ] && continue
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  say "stopping PostgreSQL and Redis (data kept in $SVC_DIR)"
  bash "$SERVICES" stop "$SVC_DIR" || true
}
on_signal() {
  trap - INT TERM
  stop_all
  exit 130
}
trap stop_all EXIT
trap on_signal INT TERM

# ---------------------------------------------------------------- main
[ -x "$BIN" ] || { say "$BIN not built (run 'make rel')"; exit 1; }
[ -f "$CONFIG" ] || { say "$CONFIG not found"; exit 1; }
"$BIN" --check-config "$CONFIG"

mkdir -p "$VAR"
bash "$SERVICES" start "$SVC_DIR" "$PG_PORT" "$REDIS_PORT"
start_simulators

say "applying migrations"
"$BIN" migrate -c "$CONFIG"

say "starting paygated: http://127.0.0.1:8080 (admin :8081) — Ctrl-C to stop"
# In the background so the traps run when a signal arrives; paygated keeps
# the terminal's output.
"$BIN" -c "$CONFIG" &
DAEMON_PID=$!
PIDS+=("$DAEMON_PID")
seed_sandbox
set +e
wait "$DAEMON_PID"
rc=$?
set -e
DAEMON_PID=""
say "paygated exited with status $rc"
exit "$rc"
