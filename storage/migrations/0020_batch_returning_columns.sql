-- 0020: the two c-to-b batch functions return from their writes only the
-- columns they use.  0019's create answered 16 columns but its insert
-- still returned the whole row (RETURNING *) into the CTE; the first
-- transition returned the whole updated row as one composite value and
-- took eleven fields out of it one by one, each a walk over the 35
-- columns.  Now the insert returns the 16 columns, and the update returns
-- the eleven it answers with, plus the whole row only for an order that
-- became SUCCESS with a notify_url (its order.paid payload needs it).
-- PostgreSQL instructions per c-to-b order (test/bench/sqlinstr.sh):
-- 694 000 → 668 000 in batches of 10, 640 000 → 610 000 in batches of 20.
-- The bodies are 0019's and 0018's otherwise (with 0018's plan settings,
-- which CREATE OR REPLACE would drop if not restated).
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

CREATE OR REPLACE FUNCTION gw_order_transition_first_many(p jsonb) RETURNS TABLE (r json, i int)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off AS $$
DECLARE
    v_ids bigint[];
    v_m jsonb;   -- order id -> [index, to, patch]
BEGIN
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(p) x(v)
                WHERE x.v->>1 IS DISTINCT FROM '{CREATED}' OR x.v->>4 IS DISTINCT FROM 'channel'
                   OR x.v->>2 IS NULL OR x.v->>2 = 'CREATED') THEN
        RAISE EXCEPTION 'gw_order_transition_first_many: not a first transition';
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT array_agg((x.v->>0)::bigint),
           jsonb_object_agg(x.v->>0, jsonb_build_array(x.ord - 1, x.v->>2, x.v->3))
      INTO v_ids, v_m
      FROM jsonb_array_elements(p) WITH ORDINALITY AS x(v, ord);
    RETURN QUERY
    WITH upd AS (
        UPDATE orders o SET
            status = v_m->(o.id::text)->>1,
            pay_data = COALESCE(v_m->(o.id::text)->2->'pay_data', o.pay_data),
            channel_trade_no = COALESCE(NULLIF(v_m->(o.id::text)->2->>'channel_trade_no', ''), o.channel_trade_no),
            channel_code = COALESCE(v_m->(o.id::text)->2->>'channel_code', o.channel_code),
            channel_msg = COALESCE(v_m->(o.id::text)->2->>'channel_msg', o.channel_msg),
            paid_at = CASE WHEN v_m->(o.id::text)->>1 = 'SUCCESS' THEN COALESCE(o.paid_at, now()) ELSE o.paid_at END,
            next_check_at = CASE WHEN v_m->(o.id::text)->>1 IN ('SUCCESS', 'FAILED', 'CLOSED') THEN NULL
                                 WHEN v_m->(o.id::text)->2 ? 'next_check_ms'
                                 THEN now() + make_interval(secs => (v_m->(o.id::text)->2->>'next_check_ms')::float8 / 1000)
                                 ELSE o.next_check_at END,
            check_attempts = CASE WHEN v_m->(o.id::text)->2 ? 'attempt' THEN o.check_attempts + 1 ELSE 0 END,
            lease_owner = NULL,
            lease_until = NULL,
            updated_at = now()
         -- "|| ''" (0011): the status test kept off any index on status
         -- (since 0017 the due index has none in its predicate)
         WHERE o.id = ANY (v_ids) AND o.status || '' = 'CREATED'
        RETURNING o.id, o.status, o.pay_data, o.channel_trade_no, o.channel_code, o.channel_msg,
                  o.paid_at, o.next_check_at, o.check_attempts, o.lease_owner, o.lease_until,
                  o.updated_at,
                  CASE WHEN o.status = 'SUCCESS' AND o.notify_url IS NOT NULL THEN o END AS paid,
                  (v_m->(o.id::text)->>0)::int AS k, v_m->(o.id::text)->2 AS patch
    ), ev AS (
        INSERT INTO order_events (order_id, from_status, to_status, source, detail)
        SELECT upd.id, 'CREATED', upd.status, 'channel',
               upd.patch - 'pay_data' - 'next_check_ms' - 'attempt'
          FROM upd
    ), notif AS (
        INSERT INTO merchant_notifications (merchant_id, order_id, event, url, payload)
        SELECT (upd.paid).merchant_id, upd.id, 'order.paid', (upd.paid).notify_url,
               jsonb_build_object('event', 'order.paid', 'order', gw_order_payload(upd.paid))
          FROM upd
         WHERE (upd.paid).id IS NOT NULL
        ON CONFLICT DO NOTHING
    )
    SELECT json_build_object('changed', true, 'changes', json_build_object(
               'status', upd.status, 'pay_data', upd.pay_data,
               'channel_trade_no', upd.channel_trade_no, 'channel_code', upd.channel_code,
               'channel_msg', upd.channel_msg, 'paid_at', upd.paid_at,
               'next_check_at', upd.next_check_at, 'check_attempts', upd.check_attempts,
               'lease_owner', upd.lease_owner, 'lease_until', upd.lease_until,
               'updated_at', upd.updated_at)), upd.k
      FROM upd;
END $$;
