-- 0016: notification ingestion in batches, set-based for the common case.
--
-- 0011's gw_notify_ingest_many ran the single function once per element.
-- perf on the PostgreSQL backends during the notification bench
-- (docs/performance.md, "Fourth round") showed executor start-up of the
-- single function's seven statements per notification as the largest item
-- (13 % of PostgreSQL's samples), with to_jsonb of the whole order row
-- (returned, and not read by paygated) and jsonb building next to it.
--
-- This form takes the common case — a verified "paid" notification whose
-- order is found, open (CREATED, PENDING, USER_PAYING, UNKNOWN), and agrees
-- on channel, merchant number and amount — as three statements for the
-- whole batch: lock and update the orders, insert their events (and the
-- merchant notifications of orders that have a notify_url), insert the
-- inbox rows.  Only the first element of a batch for a given order is taken
-- (a repeat in the same batch is a duplicate, decided by the single
-- function after it).  Every other element returns no row, and
-- storage/pg.c then runs the single function gw_notify_ingest (0008) for it
-- alone, after this batch has committed: that function still decides every
-- outcome other than "applied".  The rows written for an applied notification are
-- those gw_notify_ingest writes (the same columns and values); the result
-- carries the outcome, which is all paygated reads.
--
-- Rows are locked through the trade_no index in trade_no order, as the loop
-- did; a deadlock with another batch would fail this batch, which pg.c then
-- runs one by one.
DROP FUNCTION gw_notify_ingest_many(jsonb);

CREATE FUNCTION gw_notify_ingest_many(p jsonb) RETURNS TABLE (r json, i int)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off AS $$
BEGIN
    RETURN QUERY
    WITH input AS (
        SELECT (x.ord - 1)::int AS k, x.v->0 AS a
          FROM jsonb_array_elements(p) WITH ORDINALITY AS x(v, ord)
    ), cand AS (
        SELECT DISTINCT ON (input.a->>'out_trade_no') input.k, input.a
          FROM input
         WHERE input.a->>'verified' = 'true' AND input.a->>'kind' = 'pay'
           AND input.a->>'status' = 'SUCCESS' AND input.a ? 'amount'
         ORDER BY input.a->>'out_trade_no', input.k
    ), cur AS MATERIALIZED (
        SELECT o.id, o.status AS from_status, cand.k, cand.a
          FROM cand JOIN orders o ON o.trade_no = cand.a->>'out_trade_no'
         WHERE o.status || '' IN ('CREATED', 'PENDING', 'USER_PAYING', 'UNKNOWN')
           AND o.channel = cand.a->>'channel' AND o.channel_mch_id = cand.a->>'mch_id'
           AND o.amount = (cand.a->>'amount')::bigint
         ORDER BY o.trade_no
           FOR UPDATE OF o
    ), upd AS (
        UPDATE orders o SET
            status = 'SUCCESS',
            channel_trade_no = COALESCE(NULLIF(cur.a->>'channel_trade_no', ''), o.channel_trade_no),
            channel_code = COALESCE(cur.a->>'raw_code', o.channel_code),
            channel_msg = COALESCE(cur.a->>'raw_msg', o.channel_msg),
            paid_at = COALESCE(o.paid_at, now()),
            next_check_at = NULL,
            check_attempts = 0,
            lease_owner = NULL,
            lease_until = NULL,
            updated_at = now()
          FROM cur
         WHERE o.id = cur.id
        RETURNING o AS nr, cur.from_status, cur.k, cur.a
    ), ev AS (
        INSERT INTO order_events (order_id, from_status, to_status, source, detail)
        SELECT (upd.nr).id, upd.from_status, 'SUCCESS', 'notify',
               jsonb_build_object('channel_trade_no', upd.a->>'channel_trade_no',
                                  'channel_code', upd.a->>'raw_code',
                                  'channel_msg', upd.a->>'raw_msg')
          FROM upd
    ), notif AS (
        INSERT INTO merchant_notifications (merchant_id, order_id, event, url, payload)
        SELECT (upd.nr).merchant_id, (upd.nr).id, 'order.paid', (upd.nr).notify_url,
               jsonb_build_object('event', 'order.paid', 'order', gw_order_payload(upd.nr))
          FROM upd
         WHERE (upd.nr).notify_url IS NOT NULL
        ON CONFLICT DO NOTHING
    ), inbox AS (
        INSERT INTO notify_inbox (channel, headers, body, verified, order_id, outcome, detail)
        SELECT upd.a->>'channel', COALESCE(upd.a->>'headers', ''), COALESCE(upd.a->>'body', ''),
               true, (upd.nr).id, 'applied', upd.a - 'headers' - 'body'
          FROM upd
         ORDER BY upd.k
    )
    SELECT json_build_object('outcome', 'applied'), upd.k FROM upd;
END $$;
