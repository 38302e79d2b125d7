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
LANGUAGE sql AS $$
    WITH input AS (
        SELECT (x.ord - 1)::int AS k, x.v->0 AS a, nextval('order_id_seq') AS id
          FROM jsonb_array_elements(p) WITH ORDINALITY AS x(v, ord)
         ORDER BY x.v->0->>'merchant_id', x.v->0->>'out_trade_no'
    ), priced AS (
        SELECT input.*, (a->>'amount')::bigint AS amount,
               gw_rate_in_force(a->>'shop_id', a->>'channel') AS rate,
               COALESCE((SELECT c.ppm FROM shop_cashback c
                          WHERE c.shop_id = a->>'shop_id' AND c.method = a->>'method'), 0) AS cb_ppm
          FROM input
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
      FROM ins JOIN input ON input.id = ins.id
$$;

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
CREATE FUNCTION gw_order_transition_first_many(p jsonb) RETURNS TABLE (r jsonb, i int)
LANGUAGE plpgsql AS $$
DECLARE
    v_ids bigint[];
BEGIN
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(p) x(v)
                WHERE x.v->>1 IS DISTINCT FROM '{CREATED}' OR x.v->>4 IS DISTINCT FROM 'channel'
                   OR x.v->>2 IN ('CREATED') OR x.v->>2 IS NULL) THEN
        RAISE EXCEPTION 'gw_order_transition_first_many: not a first transition';
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);
    -- lock in id order; "= ANY (array)" keeps the plan on the primary key
    v_ids := ARRAY(SELECT (x.v->>0)::bigint FROM jsonb_array_elements(p) x(v) ORDER BY 1);
    PERFORM 1 FROM orders WHERE id = ANY (v_ids) AND status = 'CREATED' ORDER BY id FOR UPDATE;
    RETURN QUERY
    WITH input AS (
        SELECT (x.ord - 1)::int AS k, (x.v->>0)::bigint AS id, x.v->>2 AS t, x.v->3 AS patch
          FROM jsonb_array_elements(p) WITH ORDINALITY AS x(v, ord)
    ), upd AS (
        UPDATE orders o SET
            status = input.t,
            pay_data = COALESCE(input.patch->'pay_data', o.pay_data),
            channel_trade_no = COALESCE(NULLIF(input.patch->>'channel_trade_no', ''), o.channel_trade_no),
            channel_code = COALESCE(input.patch->>'channel_code', o.channel_code),
            channel_msg = COALESCE(input.patch->>'channel_msg', o.channel_msg),
            paid_at = CASE WHEN input.t = 'SUCCESS' THEN COALESCE(o.paid_at, now()) ELSE o.paid_at END,
            next_check_at = CASE WHEN input.t IN ('SUCCESS', 'FAILED', 'CLOSED') THEN NULL
                                 WHEN input.patch ? 'next_check_ms'
                                 THEN now() + make_interval(secs => (input.patch->>'next_check_ms')::float8 / 1000)
                                 ELSE o.next_check_at END,
            check_attempts = CASE WHEN input.patch ? 'attempt' THEN o.check_attempts + 1 ELSE 0 END,
            lease_owner = NULL,
            lease_until = NULL,
            updated_at = now()
          FROM input
         WHERE o.id = ANY (v_ids) AND o.id = input.id AND o.status = 'CREATED'
        RETURNING o AS nr, input.k, input.patch
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
