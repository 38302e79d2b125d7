-- 0021: the two c-to-b batch functions write their answers as text,
-- concatenated, instead of with json_build_object.  json_build_object
-- looks up every argument's type in the catalogue caches on every row
-- (json_categorize_type: getBaseType, type_is_rowtype, get_element_type,
-- getTypeOutputInfo), keys included: 66 arguments per c-to-b order,
-- ~108 000 of PostgreSQL's ~569 000 instructions per order in batches of 20
-- (callgrind on a backend, test/bench/sqlinstr.sh).  Concatenation casts
-- numbers through their output functions, looked up once per plan;
-- to_json() is kept for text from outside (currency, the channel's fields,
-- lease owner) and for timestamps, so strings are escaped and times are
-- written exactly as before ("2026-11-28T14:45:10.123456+00:00").  status
-- and trade_no are quoted directly: status is CHECK-constrained to the
-- state names, trade_no is digits.  A column that may be NULL is written
-- as null (COALESCE, since || with NULL is NULL); the others are NOT NULL
-- in the schema (0001–0003).  Measured: 569 000 -> 511 000 instructions
-- per order in batches of 20 (docs/performance.md, "Eighth round").
-- The answers are the same JSON text; the result column is text, not json
-- (a cast to json would parse it again), so the functions are dropped and
-- made again; paygated reads the column as text either way, and
-- gw_order_create's "m.r::jsonb" (0015) casts text as well as json.
-- The bodies are 0019's and 0020's but for the last SELECT; 0020's plan
-- settings are restated.
DROP FUNCTION gw_order_create_many(jsonb);
DROP FUNCTION gw_order_transition_first_many(jsonb);
CREATE OR REPLACE FUNCTION gw_order_create_many(p jsonb) RETURNS TABLE (r text, i int)
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
    SELECT '{"created":true,"order":{"id":' || ins.id || ',"trade_no":"' || ins.trade_no
           || '","status":"' || ins.status || '","currency":' || to_json(ins.currency)
           || ',"rate_ppm":' || ins.rate_ppm || ',"fee":' || ins.fee || ',"cashback":' || ins.cashback
           || ',"settle_amount":' || ins.settle_amount || ',"refunded_amount":' || ins.refunded_amount
           || ',"check_attempts":' || ins.check_attempts || ',"expire_at":' || to_json(ins.expire_at)
           || ',"next_check_at":' || COALESCE(to_json(ins.next_check_at)::text, 'null')
           || ',"lease_owner":' || COALESCE(to_json(ins.lease_owner)::text, 'null')
           || ',"lease_until":' || COALESCE(to_json(ins.lease_until)::text, 'null')
           || ',"created_at":' || to_json(ins.created_at) || ',"updated_at":' || to_json(ins.updated_at) || '}}', input.k
      FROM ins JOIN input ON input.id = ins.id;
END $$;

CREATE OR REPLACE FUNCTION gw_order_transition_first_many(p jsonb) RETURNS TABLE (r text, i int)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off AS $$
DECLARE
    v_ids bigint[];
BEGIN
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(p) x(v)
                WHERE x.v->>1 IS DISTINCT FROM '{CREATED}' OR x.v->>4 IS DISTINCT FROM 'channel'
                   OR x.v->>2 IS NULL OR x.v->>2 = 'CREATED') THEN
        RAISE EXCEPTION 'gw_order_transition_first_many: not a first transition';
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);
    -- the ids drive the scan (orders_pkey, = ANY); the join only hands each
    -- row its values
    SELECT array_agg((x.v->>0)::bigint) INTO v_ids FROM jsonb_array_elements(p) x(v);
    RETURN QUERY
    WITH i AS (
        SELECT (x.v->>0)::bigint AS id, (x.ord - 1)::int AS k, x.v->>2 AS to_status, x.v->3 AS patch
          FROM jsonb_array_elements(p) WITH ORDINALITY AS x(v, ord)
    ), upd AS (
        UPDATE orders o SET
            status = i.to_status,
            pay_data = COALESCE(i.patch->'pay_data', o.pay_data),
            channel_trade_no = COALESCE(NULLIF(i.patch->>'channel_trade_no', ''), o.channel_trade_no),
            channel_code = COALESCE(i.patch->>'channel_code', o.channel_code),
            channel_msg = COALESCE(i.patch->>'channel_msg', o.channel_msg),
            paid_at = CASE WHEN i.to_status = 'SUCCESS' THEN COALESCE(o.paid_at, now()) ELSE o.paid_at END,
            next_check_at = CASE WHEN i.to_status IN ('SUCCESS', 'FAILED', 'CLOSED') THEN NULL
                                 WHEN i.patch ? 'next_check_ms'
                                 THEN now() + make_interval(secs => (i.patch->>'next_check_ms')::float8 / 1000)
                                 ELSE o.next_check_at END,
            check_attempts = CASE WHEN i.patch ? 'attempt' THEN o.check_attempts + 1 ELSE 0 END,
            lease_owner = NULL,
            lease_until = NULL,
            updated_at = now()
          FROM i
         -- "|| ''" (0011): the status test kept off any index on status
         WHERE o.id = ANY (v_ids) AND o.id = i.id AND o.status || '' = 'CREATED'
        RETURNING o.id, o.status, o.pay_data, o.channel_trade_no, o.channel_code, o.channel_msg,
                  o.paid_at, o.next_check_at, o.check_attempts, o.lease_owner, o.lease_until,
                  o.updated_at,
                  CASE WHEN o.status = 'SUCCESS' AND o.notify_url IS NOT NULL THEN o END AS paid,
                  i.k, i.patch
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
    SELECT '{"changed":true,"changes":{"status":"' || upd.status
           || '","pay_data":' || COALESCE(upd.pay_data::text, 'null')
           || ',"channel_trade_no":' || COALESCE(to_json(upd.channel_trade_no)::text, 'null')
           || ',"channel_code":' || COALESCE(to_json(upd.channel_code)::text, 'null')
           || ',"channel_msg":' || COALESCE(to_json(upd.channel_msg)::text, 'null')
           || ',"paid_at":' || COALESCE(to_json(upd.paid_at)::text, 'null')
           || ',"next_check_at":' || COALESCE(to_json(upd.next_check_at)::text, 'null')
           || ',"check_attempts":' || upd.check_attempts
           || ',"lease_owner":' || COALESCE(to_json(upd.lease_owner)::text, 'null')
           || ',"lease_until":' || COALESCE(to_json(upd.lease_until)::text, 'null')
           || ',"updated_at":' || to_json(upd.updated_at) || '}}', upd.k
      FROM upd;
END $$;
