#!/usr/bin/env bash
# test/bench/sqlcost.sh — PostgreSQL CPU per order and per notification in
# paygated's batch functions, measured in one backend (the `sqlcost` phase of
# test/bench/run.sh, which sources this file).
#
# Why: the load phases show the rate of the whole box, which varies by
# ±15 % between runs on this VM; this phase shows what one change to the SQL
# costs, with little noise.  One session runs the statements paygated sends
# (gw_order_create_many then gw_order_transition_first_many for a c-to-b
# order, gw_notify_ingest_many for a Swiftpass payment notification) in
# batches of 1, 10 and 30, one transaction per statement as paygated sends
# them, and reads its own CPU time (user + system, from /proc/self/stat)
# before and after.  synchronous_commit is off in that session: the figure
# is CPU, without the wait for the disk (the load phases keep durability on).
# The arguments are built before the clock starts.
#
# Needs from run.sh: PG_BIN, PG_PORT, SUB1, WORK, RESULTS, say().  run.sh
# also uses sqlcost_run as the PostgreSQL part of its machine probe
# (quiet_probe; SQLCOST_QUIET=1 leaves out the HOT line).

sqlcost_psql() { "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d paygate "$@"; }

# The CPU clock of the session, in ticks.
SQLCOST_CPU="(split_part(pg_read_file('/proc/self/stat'), ' ', 14)::bigint + split_part(pg_read_file('/proc/self/stat'), ' ', 15)::bigint)"

sqlcost_run() { # kind batch units -> ms per unit (stdout)
  local kind=$1 b=$2 n=$3 tag="sc-$1-$2-$$-$(date +%s%N)" its=$(( $3 / $2 )) hz
  hz=$(getconf CLK_TCK)
  local order_arg="jsonb_build_object('merchant_id', 'bm1', 'shop_id', 'bs1', 'out_trade_no', '$tag-' || i,
      'amount', 100, 'subject', '$tag', 'method', 'wechat_qr', 'channel', 'swiftpass',
      'sub_merchant_id', $SUB1, 'channel_mch_id', '755437100001', 'request_hash', 'bench',
      'client_ip', '127.0.0.1', 'next_check_ms', 60000, 'lease_ms', 10000, 'lease_owner', 'sqlcost')"
  local patch='{"channel_code": "SUCCESS", "pay_data": {"code_url": "weixin://wxpay/bizpayurl?pr=sqlcost", "code_img_url": "https://stub.invalid/qr/1"}}'
  local loop
  {
    echo "SET synchronous_commit = off; SET client_min_messages = warning;"
    echo "CREATE TABLE IF NOT EXISTS sqlcost_args (tag text, n int, p jsonb, PRIMARY KEY (tag, n));"
    echo "INSERT INTO sqlcost_args SELECT '$tag', (i - 1) / $b, jsonb_agg(jsonb_build_array($order_arg) ORDER BY i)
            FROM generate_series(1, $n) i GROUP BY (i - 1) / $b;"
    if [ "$kind" = notify ]; then
      # the orders, PENDING, then the notifications' arguments (a real
      # Swiftpass notification body is ~930 bytes)
      echo "DO \$\$ DECLARE ids bigint[]; BEGIN
              FOR it IN 0..$(( its - 1 )) LOOP
                SELECT array_agg((r::jsonb->'order'->>'id')::bigint) INTO ids
                  FROM gw_order_create_many((SELECT p FROM sqlcost_args WHERE tag = '$tag' AND n = it));
                PERFORM count(*) FROM gw_order_transition_first_many((SELECT jsonb_agg(jsonb_build_array(id, '{CREATED}', 'PENDING', '$patch'::jsonb, 'channel')) FROM unnest(ids) id));
                COMMIT;
              END LOOP; END \$\$;"
      echo "DELETE FROM sqlcost_args WHERE tag = '$tag';"
      echo "INSERT INTO sqlcost_args SELECT '$tag', (rn - 1) / $b, jsonb_agg(jsonb_build_array(jsonb_build_object(
              'channel', 'swiftpass', 'headers', E'Host: 127.0.0.1\r\nContent-Type: text/xml; charset=UTF-8\r\nContent-Length: 930\r\n',
              'body', '<xml>' || repeat('<field><![CDATA[' || md5(trade_no) || ']]></field>', 18) || '</xml>',
              'verified', true, 'mch_id', '755437100001', 'out_trade_no', trade_no, 'kind', 'pay', 'status', 'SUCCESS',
              'amount', amount, 'channel_trade_no', '7554371000011' || id, 'raw_code', 'SUCCESS', 'raw_msg', '')) ORDER BY rn)
              FROM (SELECT trade_no, amount, id, row_number() OVER (ORDER BY id) rn FROM orders WHERE subject = '$tag') s
             GROUP BY (rn - 1) / $b;"
      loop="PERFORM count(*) FROM gw_notify_ingest_many((SELECT p FROM sqlcost_args WHERE tag = '$tag' AND n = it)); COMMIT;"
    else
      loop="SELECT array_agg((r::jsonb->'order'->>'id')::bigint) INTO ids
              FROM gw_order_create_many((SELECT p FROM sqlcost_args WHERE tag = '$tag' AND n = it));
            COMMIT;
            PERFORM count(*) FROM gw_order_transition_first_many((SELECT jsonb_agg(jsonb_build_array(id, '{CREATED}', 'PENDING', '$patch'::jsonb, 'channel')) FROM unnest(ids) id));
            COMMIT;"
    fi
    echo "SELECT $SQLCOST_CPU AS t0 \\gset"
    echo "DO \$\$ DECLARE ids bigint[]; BEGIN FOR it IN 0..$(( its - 1 )) LOOP $loop END LOOP; END \$\$;"
    echo "SELECT $SQLCOST_CPU - :t0;"
  } > "$WORK/sqlcost-$kind-$b.sql"
  local ticks upd0 upd1
  upd0=$(sqlcost_psql -c "SELECT n_tup_upd || ' ' || n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'orders'")
  ticks=$(sqlcost_psql -f "$WORK/sqlcost-$kind-$b.sql" | tail -1)
  # how many of the orders' updates were HOT (no new index entries; 0017)
  upd1=$(sqlcost_psql -c "SELECT n_tup_upd || ' ' || n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'orders'")
  [ -n "${SQLCOST_QUIET:-}" ] || say "  sqlcost: $kind batch $b: $(awk -v a="$upd0" -v b="$upd1" 'BEGIN { split(a, x, " "); split(b, y, " ");
        printf "%d of %d order updates HOT", y[2] - x[2], y[1] - x[1] }')" >&2
  # the units really went through: every order PENDING / SUCCESS
  local want=PENDING done
  [ "$kind" = notify ] && want=SUCCESS
  done=$(sqlcost_psql -c "SELECT count(*) FROM orders WHERE subject = '$tag' AND status = '$want'")
  if [ "$done" != "$n" ]; then
    say "sqlcost: $kind batch $b: $done of $n orders $want" >&2
    return 1
  fi
  awk -v t="$ticks" -v hz="$hz" -v n="$n" 'BEGIN { printf "%.4f", t * 1000 / hz / n }'
}

sqlcost_phase() {
  local units=${BENCH_SQLCOST_UNITS:-3000} kind b ms
  for kind in order notify; do
    for b in 1 10 30; do
      ms=$(sqlcost_run "$kind" "$b" "$units") || continue
      say "  PostgreSQL CPU per $kind in batches of $b: $ms ms"
      echo "{\"phase\":\"sqlcost\",\"kind\":\"$kind\",\"batch\":$b,\"units\":$units,\"ms_per_unit\":$ms,\"loadavg_end\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >> "$RESULTS"
    done
  done
}
