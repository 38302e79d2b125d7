-- 0019: a created order's answer names only the columns the insert
-- computed (id, trade_no, status, fees, times, lease), not the whole row.
-- paygated holds the argument it sent (the merchant's fields, channel,
-- sub-merchant) and merges the answer into it (core/api.c
-- create_order_cb), so the order it replies with is the same.  row_to_json
-- of the 35-column row and its copy into the answer were ~4 % of
-- PostgreSQL's instructions per c-to-b order (callgrind on a backend,
-- docs/performance.md "Seventh round"), and parsing it the largest JSON
-- paygated reads per order; the insert returns only those columns into
-- the CTE too.  gw_order_create (0015) returns this answer
-- when it creates; a repeat still gets the whole stored row ("created":
-- false), which paygated takes as it is.  The body is 0015's but for the
-- RETURNING list and the last SELECT.
CREATE OR REPLACE FUNCTION gw_order_create_many(p jsonb) RETURNS TABLE (r json, i int)
LANGUAGE plpgsql AS $$
BEGIN
    -- plpgsql, not sql: its plan is cached for the session (a LANGUAGE sql
    -- function body is parsed and planned again on every call)
    RETURN QUERY
    WITH input AS (
        SELECT (x.ord - 1)::int AS k, x.v->0 AS a, nextval('order_id_seq') AS id
          FROM jsonb_array_elements(p) WITH ORDINALITY AS x(v, ord)
         ORDER BY x.v->0->>'merchant_id', x.v->0->>'out_trade_no'
    ), priced AS MATERIALIZED (
        -- joins, not gw_rate_in_force(): a LANGUAGE sql function with a
        -- sub-select is not inlined, and a call per row (or three: the
        -- columns below each name the rate) costs more than the insert
        SELECT input.k, input.a, input.id, (input.a->>'amount')::bigint AS amount,
               COALESCE(CASE WHEN sr.future_from IS NOT NULL AND now() >= sr.future_from
                             THEN sr.future_ppm ELSE sr.current_ppm END, 0) AS rate,
               COALESCE(sc.ppm, 0) AS cb_ppm
          FROM input
          LEFT JOIN shop_rates sr ON sr.shop_id = input.a->>'shop_id' AND sr.channel = input.a->>'channel'
          LEFT JOIN shop_cashback sc ON sc.shop_id = input.a->>'shop_id' AND sc.method = input.a->>'method'
    ), ins AS (
        INSERT INTO orders (id, trade_no, merchant_id, shop_id, out_trade_no, amount, currency,
                            subject, method, channel, sub_merchant_id, channel_mch_id, payer_id,
                            customer_id, client_ip, notify_url, attach, status, request_hash,
                            rate_ppm, fee, cashback, settle_amount, expire_at, next_check_at,
                            lease_owner, lease_until)
        SELECT id, to_char(now() AT TIME ZONE 'Asia/Shanghai', 'YYYYMMDD') || lpad(id::text, 14, '0'),
               a->>'merchant_id', a->>'shop_id', a->>'out_trade_no', amount,
               COALESCE(a->>'currency', 'CNY'), a->>'subject', a->>'method', a->>'channel',
               (a->>'sub_merchant_id')::bigint, a->>'channel_mch_id', a->>'payer_id',
               a->>'customer_id', a->>'client_ip', a->>'notify_url', a->>'attach', 'CREATED',
               a->>'request_hash', rate, gw_ppm_of(amount, rate), gw_ppm_of(amount, cb_ppm),
               amount - gw_ppm_of(amount, rate) + gw_ppm_of(amount, cb_ppm),
               now() + make_interval(secs => COALESCE((a->>'expire_s')::int, 7200)),
               now() + make_interval(secs => COALESCE((a->>'next_check_ms')::float8, 30000) / 1000),
               CASE WHEN a ? 'lease_ms' THEN a->>'lease_owner' END,
               CASE WHEN a ? 'lease_ms' THEN now() + make_interval(secs => (a->>'lease_ms')::float8 / 1000) END
          FROM priced
        ON CONFLICT (merchant_id, out_trade_no) DO NOTHING
        -- only what the answer and the event use (not RETURNING *)
        RETURNING id, trade_no, status, currency, rate_ppm, fee, cashback, settle_amount,
                  refunded_amount, check_attempts, expire_at, next_check_at, lease_owner,
                  lease_until, created_at, updated_at
    ), ev AS (
        INSERT INTO order_events (order_id, from_status, to_status, source)
        SELECT id, NULL, 'CREATED', 'api' FROM ins
    )
    -- the columns the insert computed; the rest are the argument's
    SELECT json_build_object('created', true, 'order', json_build_object(
               'id', ins.id, 'trade_no', ins.trade_no, 'status', ins.status, 'currency', ins.currency,
               'rate_ppm', ins.rate_ppm, 'fee', ins.fee, 'cashback', ins.cashback,
               'settle_amount', ins.settle_amount, 'refunded_amount', ins.refunded_amount,
               'check_attempts', ins.check_attempts, 'expire_at', ins.expire_at,
               'next_check_at', ins.next_check_at, 'lease_owner', ins.lease_owner,
               'lease_until', ins.lease_until, 'created_at', ins.created_at,
               'updated_at', ins.updated_at)), input.k
      FROM ins JOIN input ON input.id = ins.id;
END $$;
