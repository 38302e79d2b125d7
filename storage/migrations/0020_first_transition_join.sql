-- 0020: the first-transition batch reads its input once and returns from
-- its update only the columns it uses.
--  * 0011 put the input into a jsonb object keyed by order id and looked
--    every value up in it (twelve lookups per row, each with the id cast to
--    text); the update now joins the input's rows (a hash join on the id).
--    The ids still drive the scan (orders_pkey, id = ANY), so the plan
--    stays index-driven whatever the table's size when the session plans it
--    (a plain join let a session that planned on a small table keep
--    scanning the whole index: measured, not kept).
--  * It returned the whole updated row as one composite value and took the
--    eleven fields it answers with out of it one by one, each a walk over
--    the 35 columns (nocachegetattr was 5 % of a backend's instructions).
--    Now the update returns the eleven, and the whole row only for an order
--    that became SUCCESS with a notify_url (its order.paid payload needs it).
-- With 0019, PostgreSQL instructions per c-to-b order (test/bench/sqlinstr.sh):
-- 733 000 → 630 000 in batches of 10, 661 000 → 566 000 in batches of 20.
-- 0018's plan settings are restated (CREATE OR REPLACE would drop them).
CREATE OR REPLACE FUNCTION gw_order_transition_first_many(p jsonb) RETURNS TABLE (r json, i int)
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
    SELECT json_build_object('changed', true, 'changes', json_build_object(
               'status', upd.status, 'pay_data', upd.pay_data,
               'channel_trade_no', upd.channel_trade_no, 'channel_code', upd.channel_code,
               'channel_msg', upd.channel_msg, 'paid_at', upd.paid_at,
               'next_check_at', upd.next_check_at, 'check_attempts', upd.check_attempts,
               'lease_owner', upd.lease_owner, 'lease_until', upd.lease_until,
               'updated_at', upd.updated_at)), upd.k
      FROM upd;
END $$;
