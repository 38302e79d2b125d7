-- 0015: the batch forms (0011, 0014) answer in json, not jsonb.  Their
-- result goes straight to paygated as text; building it as jsonb (to_jsonb
-- of the whole row: a tree of 35 values, its keys sorted, converted to the
-- binary form and printed back to text) was a tenth of PostgreSQL's time in
-- the c-to-b bench (perf, docs/performance.md "Third round").  row_to_json
-- writes the text directly.  The values are the same: the same names,
-- numbers, strings and timestamps (both print timestamps in ISO 8601); only
-- the key order and the spacing differ, which no reader depends on.  The
-- single functions keep returning jsonb.  The bodies are those of 0011 with
-- only the result expression changed (and 0014's settings for the
-- transition).

DROP FUNCTION gw_order_create_many(jsonb);
DROP FUNCTION gw_order_transition_first_many(jsonb);

CREATE FUNCTION gw_order_create_many(p jsonb) RETURNS TABLE (r json, i int)
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
        RETURNING *
    ), ev AS (
        INSERT INTO order_events (order_id, from_status, to_status, source)
        SELECT id, NULL, 'CREATED', 'api' FROM ins
    )
    SELECT json_build_object('created', true, 'order', row_to_json(ins)), input.k
      FROM ins JOIN input ON input.id = ins.id;
END $$;

CREATE OR REPLACE FUNCTION gw_order_create(p jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v jsonb;
    o orders;
BEGIN
    SELECT m.r::jsonb INTO v FROM gw_order_create_many(jsonb_build_array(jsonb_build_array(p))) m;
    IF v IS NOT NULL THEN
        RETURN v;
    END IF;
    SELECT * INTO o FROM orders
     WHERE merchant_id = p->>'merchant_id' AND out_trade_no = p->>'out_trade_no';
    RETURN jsonb_build_object('created', false, 'order', to_jsonb(o));
END $$;

CREATE FUNCTION gw_order_transition_first_many(p jsonb) RETURNS TABLE (r json, i int)
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
         -- "|| ''": the status test must not match orders_due_idx's predicate,
         -- or the planner ANDs in a scan of that whole index (every open
         -- order) — measured when many orders were CREATED at once
         WHERE o.id = ANY (v_ids) AND o.status || '' = 'CREATED'
        RETURNING o AS nr, (v_m->(o.id::text)->>0)::int AS k, v_m->(o.id::text)->2 AS patch
    ), ev AS (
        INSERT INTO order_events (order_id, from_status, to_status, source, detail)
        SELECT (upd.nr).id, 'CREATED', (upd.nr).status, 'channel',
               upd.patch - 'pay_data' - 'next_check_ms' - 'attempt'
          FROM upd
    ), notif AS (
        INSERT INTO merchant_notifications (merchant_id, order_id, event, url, payload)
        SELECT (upd.nr).merchant_id, (upd.nr).id, 'order.paid', (upd.nr).notify_url,
               jsonb_build_object('event', 'order.paid', 'order', gw_order_payload(upd.nr))
          FROM upd
         WHERE (upd.nr).status = 'SUCCESS' AND (upd.nr).notify_url IS NOT NULL
        ON CONFLICT DO NOTHING
    )
    SELECT json_build_object('changed', true, 'order', row_to_json(upd.nr)), upd.k FROM upd;
END $$;
