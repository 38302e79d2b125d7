#!/usr/bin/env bash
# test/bench/sqlinstr.sh — PostgreSQL instructions per c-to-b order in
# paygated's two batch functions, counted by callgrind: a figure that does
# not move with the VM's speed (the load phases and `sqlcost` vary by
# 15-40 % from run to run on this machine, more than most changes to the
# SQL are worth).
#
#   bash test/bench/sqlinstr.sh [EXTRA.sql]      (needs valgrind and build/rel)
#
# A private cluster gets paygated's schema (`paygated migrate`) and is
# stopped; then `postgres --single` runs under callgrind, counting only
# inside DO blocks (--toggle-collect=plpgsql_inline_handler).  Each DO block
# runs batches as paygated sends them: gw_order_create_many on the JSON text
# of N orders (cast to jsonb: the parse is counted, as in the server), then
# gw_order_transition_first_many on their answers' ids, one transaction
# each.  A first block of one batch plans the statements; the figure is
# the difference between runs of 300 and 900 orders, divided by 600, so
# planning and start-up cancel out.  synchronous_commit is off (no wait
# for the disk; the WAL records are still written and counted).
#
# EXTRA.sql, when given, runs before the orders in each session (for
# example a CREATE OR REPLACE FUNCTION to compare with the migrations'
# version).  SQLINSTR_BATCHES (default "1 10 20") sets the batch sizes.
set -euo pipefail
cd "$(dirname "$0")/../.."
EXTRA=${1:-}
BATCHES=${SQLINSTR_BATCHES:-1 10 20}
command -v valgrind >/dev/null || { echo "sqlinstr: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
[ -x build/rel/paygated ] || make -s rel
DIR=$(mktemp -d /tmp/paygate-sqlinstr.XXXXXX)
[ -n "${SQLINSTR_KEEP:-}" ] || trap 'SERVICES_QUIET=1 bash test/lib/services.sh destroy "$DIR/svc" >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
SERVICES_QUIET=1 bash test/lib/services.sh start "$DIR/svc" >/dev/null
# shellcheck disable=SC1091
. "$DIR/svc/services.env"
cat > "$DIR/paygated.json" <<EOF
{ "listen": { "host": "127.0.0.1", "port": 9 },
  "admin": { "host": "127.0.0.1", "port": 10, "token": "sqlinstr-not-served-0123456789abcdef" },
  "postgres": { "conninfo": "host=127.0.0.1 port=$PG_PORT dbname=paygate user=paygate" },
  "redis": { "host": "127.0.0.1", "port": $REDIS_PORT },
  "channels": { "dir": "$DIR" } }
EOF
build/rel/paygated migrate -c "$DIR/paygated.json" 2> "$DIR/migrate.log" || { cat "$DIR/migrate.log" >&2; exit 1; }
SERVICES_QUIET=1 bash test/lib/services.sh stop "$DIR/svc" >/dev/null
PGDATA_DIR=$(readlink -f "$DIR/svc/pg")/data
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
chmod 777 "$DIR" # postgres (the user) writes the callgrind files here
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# count N B -> instructions inside the DO blocks (stdout)
count() {
  local n=$1 b=$2 tag="si$RANDOM" its=$(( $1 / $2 ))
  local order="jsonb_build_object('merchant_id', 'bm1', 'shop_id', 'bs1', 'out_trade_no', '$tag-' || it0 || '-' || i,
      'amount', 100, 'subject', 'sqlinstr', 'method', 'wechat_qr', 'channel', 'swiftpass',
      'sub_merchant_id', 1, 'channel_mch_id', '755437100001',
      'request_hash', 'b2c6f1a0e4d35c7f9e8a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6', 'client_ip', '127.0.0.1',
      'notify_url', 'https://merchant.example/notify/paygate', 'next_check_ms', 60000, 'lease_ms', 10000,
      'lease_owner', 'paygated-12345')"
  local patch='{"channel_code": "SUCCESS", "channel_msg": "", "channel_trade_no": "", "pay_data": {"code_url": "weixin://wxpay/bizpayurl?pr=abcdef123", "code_img_url": "https://pay.swiftpass.cn/pay/qrcode?uuid=weixin%3A%2F%2Fwxpay%2Fbizpayurl%3Fpr%3Dabcdef123"}, "next_check_ms": 5000}'
  {
    echo "SET synchronous_commit = off;"; echo
    if [ -n "$EXTRA" ]; then cat "$EXTRA"; echo; echo; fi
    echo "CREATE TABLE IF NOT EXISTS sqlinstr_args (tag text, n int, p text, q text, PRIMARY KEY (tag, n));"; echo
    local lo hi
    for pass in warm run; do
      if [ $pass = warm ]; then lo=0; hi=0; else lo=1; hi=$its; fi
      # the arguments as paygated sends them (JSON text); the ids are the
      # sequence's next ones (nothing else takes any in a single session)
      echo "INSERT INTO sqlinstr_args SELECT '$tag', $lo + (i - 1) / $b,
              jsonb_agg(jsonb_build_array($order) ORDER BY i)::text,
              jsonb_agg(jsonb_build_array(s.v + i, '{CREATED}', 'PENDING', '$patch'::jsonb, 'channel') ORDER BY i)::text
            FROM generate_series(1, $(( (hi - lo + 1) * b ))) i, (SELECT $lo AS it0) w,
                 (SELECT last_value - CASE WHEN is_called THEN 0 ELSE 1 END AS v FROM order_id_seq) s
           GROUP BY (i - 1) / $b;"; echo
      echo "DO \$\$ BEGIN FOR it IN $lo..$hi LOOP
              PERFORM count(*) FROM gw_order_create_many((SELECT p FROM sqlinstr_args WHERE tag = '$tag' AND n = it)::jsonb);
              COMMIT;
              PERFORM count(*) FROM gw_order_transition_first_many((SELECT q FROM sqlinstr_args WHERE tag = '$tag' AND n = it)::jsonb);
              COMMIT;
            END LOOP; END \$\$;"; echo
    done
    echo "SELECT count(*) FROM orders WHERE out_trade_no LIKE '$tag-%' AND status = 'PENDING';"; echo
  } > "$DIR/run.sql"
  chmod 644 "$DIR/run.sql"
  rm -f "$DIR"/cg.*
  as_pg valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.%p" --toggle-collect=plpgsql_inline_handler \
    "$PG_BIN/postgres" --single -j -D "$PGDATA_DIR" paygate < "$DIR/run.sql" > "$DIR/out.txt" 2> "$DIR/err.txt"
  local got want=$(( (its + 1) * b ))
  got=$(grep -o 'count = "[0-9]*"' "$DIR/out.txt" | tail -1 | tr -dc 0-9)
  if [ "$got" != "$want" ]; then
    echo "sqlinstr: $got of $want orders PENDING" >&2
    grep -h "ERROR" "$DIR/out.txt" "$DIR/err.txt" | head -5 >&2
    return 1
  fi
  grep -h "^summary:\|^totals:" "$DIR"/cg.* | head -1 | awk '{print $2}'
}

echo "PostgreSQL instructions per c-to-b order (create + first transition), by batch size${EXTRA:+, with $EXTRA}:"
for b in $BATCHES; do
  a=$(count 300 "$b") && z=$(count 900 "$b") || exit 1
  echo "  batches of $b: $(( (z - a) / 600 ))"
done
