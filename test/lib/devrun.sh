#!/usr/bin/env bash
# devrun.sh — what `make run` runs after building build/rel/paygated:
#
#   1. keys and generated configuration under ./var (test/lib/devsandbox.js:
#      RSA keys made once and kept, never committed; var/paygated.json is
#      config/dev.json with the ports below and those keys);
#   2. a private PostgreSQL (127.0.0.1:55432) and Redis (127.0.0.1:56379) in
#      ./var/services (kept between runs: a second `make run` has the data of
#      the first);
#   3. the four channel simulators (start_simulators below): Swiftpass :18001,
#      MyBank :18002, Alipay :18003, WeChat Pay :18004, logs in ./var/log;
#   4. paygated migrate, then paygated in the foreground (public API
#      http://127.0.0.1:8080, admin :8081, token dev-admin-token), and the
#      sandbox merchant seeded (seed_sandbox below).
#
# Ctrl-C or SIGTERM stops paygated, the simulators and the services, then
# devrun exits with status 130 (test/integration/devrun.test.js checks it).
# Environment: PAYGATED_CONFIG (default config/dev.json), PAYGATED_BIN
# (default build/rel/paygated), PAYGATED_CHANNELS_DIR (default the config's
# channels.dir), VAR_DIR (default ./var), and the ports API_PORT (8080),
# ADMIN_PORT (8081), PG_PORT (55432), REDIS_PORT (56379), SWIFTPASS_SIM_PORT
# (18001), MYBANK_SIM_PORT (18002), ALIPAY_SIM_PORT (18003),
# WECHATPAY_SIM_PORT (18004) — so that a second instance (a test) can run
# beside a developer's.  Relative paths are taken from the repository's root.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
CONFIG=${PAYGATED_CONFIG:-config/dev.json}
BIN=${PAYGATED_BIN:-build/rel/paygated}
VAR=${VAR_DIR:-$ROOT/var}
SVC_DIR=$VAR/services
SERVICES="$ROOT/test/lib/services.sh"
# exported: test/lib/devsandbox.js writes them into the generated configuration
export API_PORT=${API_PORT:-8080}
export ADMIN_PORT=${ADMIN_PORT:-8081}
export PG_PORT=${PG_PORT:-55432}
export REDIS_PORT=${REDIS_PORT:-56379}
export SWIFTPASS_SIM_PORT=${SWIFTPASS_SIM_PORT:-18001}
export MYBANK_SIM_PORT=${MYBANK_SIM_PORT:-18002}
export ALIPAY_SIM_PORT=${ALIPAY_SIM_PORT:-18003}
export WECHATPAY_SIM_PORT=${WECHATPAY_SIM_PORT:-18004}
GEN_CONFIG=$VAR/paygated.json

PIDS=()          # simulators and the daemon, stopped in reverse order
DAEMON_PID=""
STOPPING=0

say() { echo "devrun: $*" >&2; }

# ---------------------------------------------------------------- simulators
# Each simulator runs in the background with its pid in PIDS, on its own
# fixed port, its output in $VAR/log/sim-<name>.log.  Swiftpass reads its
# committed config (MD5 sandbox keys); the RSA channels read the copy
# devsandbox.js made with the generated keys.
start_sim() { # name port config
  local name=$1 port=$2 config=$3 log="$VAR/log/sim-$1.log"
  say "starting the $name simulator on http://127.0.0.1:$port (log: $log)"
  node "test/sim/$name.js" --port "$port" --config "$config" > "$log" 2>&1 &
  PIDS+=($!)
}

# Waits for every simulator's "<name>-sim listening on" line, so that the
# sandbox is usable once it says so; a simulator that exited (a port in use,
# a bad config) stops devrun with the end of its log.
wait_simulators() {
  local name i log pid n=0
  for name in swiftpass mybank alipay wechatpay; do
    log="$VAR/log/sim-$name.log"
    pid=${PIDS[$n]}
    n=$((n + 1))
    for i in $(seq 1 150); do
      grep -q "^$name-sim listening on" "$log" 2>/dev/null && continue 2
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    say "the $name simulator did not start; the end of $log:"
    tail -n 5 "$log" >&2 || true
    return 1
  done
}

start_simulators() {
  mkdir -p "$VAR/log"
  start_sim swiftpass "$SWIFTPASS_SIM_PORT" config/sim/swiftpass.json
  start_sim mybank "$MYBANK_SIM_PORT" "$VAR/sim/mybank.json"
  start_sim alipay "$ALIPAY_SIM_PORT" "$VAR/sim/alipay.json"
  start_sim wechatpay "$WECHATPAY_SIM_PORT" "$VAR/sim/wechatpay.json"
  wait_simulators
}

# ---------------------------------------------------------------- sandbox
# The demo merchant m1 (secret "0123456789abcdef0123") and one shop per
# channel, bound for every method that channel's module serves:
#   channel   shop         methods
SANDBOX=(
  "swiftpass s1          wechat_qr,wechat_jsapi,alipay_qr,alipay_jsapi,barcode"
  "mybank    s-mybank    wechat_qr,wechat_jsapi,alipay_qr,alipay_jsapi,barcode"
  "alipay    s-alipay    alipay_qr,barcode"
  "wechatpay s-wechatpay wechat_qr,wechat_jsapi,barcode"
)
declare -A SHOP_NAME=(
  [s1]="Demo Tea House, West Lake"      # the name s1 had when it was the only shop
  [s-mybank]="Demo Tea House (MyBank)"
  [s-alipay]="Demo Tea House (Alipay)"
  [s-wechatpay]="Demo Tea House (WeChat Pay)"
)
# The sub-merchants are those of each simulator's config, with their
# credentials, one request body a line in $VAR/seed/<channel>.jsonl
# (devsandbox.js).  Every call is a PUT or an upsert (POST /admin/sub-merchants
# is keyed by channel and mch_id and answers the same id again), so a second
# `make run` changes nothing.

ADMIN_URL="http://127.0.0.1:$ADMIN_PORT"
ADMIN_TOKEN=""
# admin METHOD PATH: the request body (if any) on stdin — never on curl's
# command line, where other users could read the keys in it (ps) — and the
# answer on stdout.  A failure is reported (the answer holds no secret) and
# returns 1.
admin() {
  local out code
  out=$(curl -s -X "$1" "$ADMIN_URL$2" -H "Authorization: Bearer $ADMIN_TOKEN" \
        -H 'Content-Type: application/json' --data-binary @- -w '\n%{http_code}') || true
  code=${out##*$'\n'}
  out=${out%$'\n'*}
  if [ "$code" != 200 ]; then
    say "seeding: $1 $2 failed: HTTP ${code:-none} ${out:0:300}"
    return 1
  fi
  printf '%s\n' "$out"
}

seed_channel() { # channel shop methods
  local channel=$1 shop=$2 methods=$3 body id mch ids="" mchs="" m
  [ -s "$VAR/seed/$channel.jsonl" ] || { say "seeding: no $channel sub-merchants in $VAR/seed/$channel.jsonl"; return 1; }
  admin PUT "/admin/shops/$shop" <<< "{\"merchant_id\":\"m1\",\"name\":\"${SHOP_NAME[$shop]}\"}" >/dev/null || return 1
  while IFS= read -r body; do
    id=$(admin POST /admin/sub-merchants <<< "$body" | sed -n 's/.*"id": *\([0-9]*\).*/\1/p') || return 1
    [ -n "$id" ] || { say "seeding: no id for a $channel sub-merchant"; return 1; }
    mch=$(sed -n 's/.*"mch_id":"\([^"]*\)".*/\1/p' <<< "$body")
    ids="$ids${ids:+,}$id"
    mchs="$mchs${mchs:+ }$mch"
  done < "$VAR/seed/$channel.jsonl"
  for m in ${methods//,/ }; do
    admin PUT "/admin/shops/$shop/bindings/$m" <<< "[{\"channel\":\"$channel\",\"sub_merchant_ids\":[$ids]}]" >/dev/null || return 1
  done
  local port_var="${channel^^}_SIM_PORT"
  say "sandbox $channel: shop $shop, methods ${methods//,/ }; sub-merchants $mchs (ids $ids); simulator http://127.0.0.1:${!port_var}"
}

seed_sandbox() {
  local i row
  ADMIN_TOKEN=$(node -p 'require(process.argv[1]).admin.token' "$GEN_CONFIG")
  for i in $(seq 1 300); do
    curl -sf "$ADMIN_URL/healthz" -H "Authorization: Bearer $ADMIN_TOKEN" >/dev/null 2>&1 && break
    kill -0 "$DAEMON_PID" 2>/dev/null || return 1
    sleep 0.1
  done
  admin PUT /admin/merchants/m1 <<< '{"name":"Demo Tea House","secret":"0123456789abcdef0123"}' >/dev/null || return 1
  for row in "${SANDBOX[@]}"; do
    # shellcheck disable=SC2086  # the row is three words
    seed_channel $row || return 1
  done
  say "sandbox ready: merchant m1 (secret 0123456789abcdef0123), shops s1 (Swiftpass), s-mybank, s-alipay, s-wechatpay"
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
  if [ -d "$SVC_DIR" ]; then
    say "stopping PostgreSQL and Redis (data kept in $SVC_DIR)"
    bash "$SERVICES" stop "$SVC_DIR" || true
  fi
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
command -v node >/dev/null || { say "node not found (run 'make deps')"; exit 1; }
command -v openssl >/dev/null || { say "openssl not found (run 'make deps')"; exit 1; }

mkdir -p "$VAR"
say "generating $GEN_CONFIG and the simulators' configs (keys in $VAR/keys, made once)"
node test/lib/devsandbox.js "$VAR" "$CONFIG"
"$BIN" --check-config "$GEN_CONFIG"

bash "$SERVICES" start "$SVC_DIR" "$PG_PORT" "$REDIS_PORT"
start_simulators

say "applying migrations"
"$BIN" migrate -c "$GEN_CONFIG"

say "starting paygated: http://127.0.0.1:$API_PORT (admin :$ADMIN_PORT) — Ctrl-C to stop"
# In the background so the traps run when a signal arrives; paygated keeps
# the terminal's output.
"$BIN" -c "$GEN_CONFIG" &
DAEMON_PID=$!
PIDS+=("$DAEMON_PID")
seed_sandbox || say "seeding failed (see above); paygated keeps running"
set +e
wait "$DAEMON_PID"
rc=$?
set -e
DAEMON_PID=""
say "paygated exited with status $rc"
exit "$rc"
