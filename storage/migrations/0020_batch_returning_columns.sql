-- 0020: the first-transition batch returns from its update only the
-- columns it uses.  It returned the whole updated row as one composite
-- value and took the eleven fields it answers with out of it one by one,
-- each a walk over the 35 columns (nocachegetattr was 5 % of a backend's
-- instructions).  Now the update returns the eleven, and the whole row
-- only for an order that became SUCCESS with a notify_url (its order.paid
-- payload needs it).  With 0019, PostgreSQL instructions per c-to-b order
-- (test/bench/sqlinstr.sh): 733 000 → 668 000 in batches of 10, 661 000 →
-- 610 000 in batches of 20.  The body is 0018's otherwise (with its plan
-- settings, which CREATE OR REPLACE would drop if not restated).
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
