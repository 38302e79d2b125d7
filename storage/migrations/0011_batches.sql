-- 0011: batches.  storage/pg.c may send the jobs of one statement that are
-- queued in the same loop turn as ONE statement of its batch form (see
-- gw_pg_batchable in storage/pg.h): one transaction, one commit and one WAL
-- flush for all of them instead of one each, and one round trip.  Every
-- batch function takes a jsonb array with one element per job, the element
-- being the array of that job's parameters, and returns one row per job:
-- (r = what the single statement returns, i = the element's index).
--
-- A batch is atomic: if any element fails, the whole batch rolls back and
-- pg.c runs the jobs one by one with the single statement, so one bad
-- element still fails only itself.  A job for which a batch returns no row
-- (or a NULL r) is also run alone: the batch forms handle the common case
-- and leave the rare ones (an existing order, a transition that no longer
-- applies) to the single functions.  Rows are locked in a fixed order, so
-- two batches on two connections that touch the same rows wait for each
-- other instead of deadlocking (a deadlock would only cost a re-run alone).

-- Order creation, set-based: one INSERT for the whole batch, with the fee,
-- cashback, first check and lease computed in it (they were two BEFORE
-- INSERT triggers, run once per row: a third of the create's cost, see
-- docs/performance.md).  An element whose (merchant_id, out_trade_no)
-- exists already gets no row; the single gw_order_create below, which
-- pg.c then runs for it, returns the existing order.
CREATE FUNCTION gw_order_create_many(p jsonb) RETURNS TABLE (r jsonb, i int)
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
    SELECT jsonb_build_object('created', true, 'order', to_jsonb(ins)), input.k
      FROM ins JOIN input ON input.id = ins.id;
END $$;

-- The single form: the batch of one, or the existing order.
CREATE OR REPLACE FUNCTION gw_order_create(p jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v jsonb;
    o orders;
BEGIN
    SELECT m.r INTO v FROM gw_order_create_many(jsonb_build_array(jsonb_build_array(p))) m;
    IF v IS NOT NULL THEN
        RETURN v;
    END IF;
    SELECT * INTO o FROM orders
     WHERE merchant_id = p->>'merchant_id' AND out_trade_no = p->>'out_trade_no';
    RETURN jsonb_build_object('created', false, 'order', to_jsonb(o));
END $$;

DROP TRIGGER orders_fees ON orders;
DROP TRIGGER orders_first_check ON orders;
DROP FUNCTION gw_order_fees();
DROP FUNCTION gw_order_create_v1(jsonb);

-- The first transition of new orders after their channel calls (source
-- 'channel', from {CREATED}), set-based.  Only these may be batched: they
-- commit without waiting for the WAL flush (0009), and a batch is one
-- transaction — any other transition in it would lose its durability, so
-- the batch refuses one.  The same effects as gw_order_transition (0002):
-- update, event, merchant notification on SUCCESS.  An element whose order
-- is no longer CREATED gets no row: pg.c runs it alone, and the single
-- function answers "changed": false with the order.
-- No join in the UPDATE: the elements are looked up by order id in a jsonb
-- object, so the plan is an index scan of the listed ids whatever the
-- planner thinks of the table (a join planned while the table was small
-- stayed a sequential scan of orders in plpgsql's cached plan: measured,
-- the cost of a batch grew with the table), and the plan is made for each
-- call (plan_cache_mode): planned with the batch's real ids and the table's
-- real size, it is the primary key's (with enable_seqscan off instead, the
-- planner AND-ed in a scan of the whole due index).  Lock order: an order has one first transition, so two
-- batches never share a row; a single transition that meets a batch on the
-- same row simply waits for it.
CREATE FUNCTION gw_order_transition_first_many(p jsonb) RETURNS TABLE (r jsonb, i int)
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $$
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
    SELECT jsonb_build_object('changed', true, 'order', to_jsonb(upd.nr)), upd.k FROM upd;
END $$;

-- Notification ingestion: the single function per element, in one
-- transaction (one commit for the batch).  A set-based form of the common
-- case (a verified "paid" notification for an open order) was measured
-- against this loop and was no faster within the bench's noise
-- (docs/performance.md), so the one place that decides a notification's
-- outcome stays gw_notify_ingest (0008).  Rows are locked in trade_no order.
CREATE FUNCTION gw_notify_ingest_many(p jsonb) RETURNS TABLE (r jsonb, i int)
LANGUAGE plpgsql AS $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT (x.ord - 1)::int AS k, x.v->0 AS a
               FROM jsonb_array_elements(p) WITH ORDINALITY AS x(v, ord)
              ORDER BY x.v->0->>'out_trade_no'
    LOOP
        i := e.k;
        r := gw_notify_ingest(e.a);
        RETURN NEXT;
    END LOOP;
END $$;
