-- 0012_settlement_adjustments: booking corrections of settlement entries
-- (POST /admin/settlement/adjustments, core/settle.c).
--
--   * settlement_entries stays insert-only: a correction is a new entry of
--     kind 'adjustment' whose `corrects` names the entry it corrects, with a
--     required `note`, booked at the moment it is made (occurred_at = now(),
--     so it is on the shop's statement of the day it is booked).
--   * The caller gives an idempotency key: the same key again returns the
--     entry it booked (a retried request books nothing twice); the same key
--     with other content is a conflict.  Adding the columns touches no row
--     (nullable, no default), so the insert-only trigger is not involved.

ALTER TABLE settlement_entries ADD COLUMN idempotency_key text;
ALTER TABLE settlement_entries ADD COLUMN operator_id text;
CREATE UNIQUE INDEX settlement_entries_idempotency ON settlement_entries (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The answer for an adjustment entry s booked under a key: "created" or
-- "replayed" when it is what this request asks for, else "conflict".
CREATE FUNCTION gw_settle_adjust_answer(s settlement_entries, p_corrects bigint, p_gross bigint,
                                        p_fee bigint, p_cashback bigint, p_note text, p_created boolean)
RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'status', CASE WHEN s.kind = 'adjustment' AND s.corrects = p_corrects AND s.gross = p_gross
                            AND s.fee = p_fee AND s.cashback = p_cashback AND s.note = p_note
                       THEN CASE WHEN p_created THEN 'created' ELSE 'replayed' END
                       ELSE 'conflict' END,
        'entry', jsonb_strip_nulls(jsonb_build_object(
            'id', s.id, 'kind', s.kind, 'corrects', s.corrects, 'merchant_id', s.merchant_id,
            'shop_id', s.shop_id, 'channel', s.channel, 'channel_mch_id', s.channel_mch_id,
            'trade_no', s.trade_no, 'refund_no', s.refund_no, 'gross', s.gross, 'fee', s.fee,
            'cashback', s.cashback, 'net', s.net, 'occurred_at', s.occurred_at, 'note', s.note,
            'operator_id', s.operator_id, 'idempotency_key', s.idempotency_key)))
$$;

-- Books an adjustment of entry p_corrects (amounts in fen, signed; net is
-- derived).  {"status": "created"|"replayed"|"conflict", "entry": {…}} or
-- {"status": "unknown_entry"}.
CREATE FUNCTION gw_settle_adjust(p_key text, p_corrects bigint, p_gross bigint, p_fee bigint,
                                 p_cashback bigint, p_note text, p_operator text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    c settlement_entries;
    s settlement_entries;
BEGIN
    SELECT * INTO s FROM settlement_entries WHERE idempotency_key = p_key;
    IF FOUND THEN
        RETURN gw_settle_adjust_answer(s, p_corrects, p_gross, p_fee, p_cashback, p_note, false);
    END IF;
    SELECT * INTO c FROM settlement_entries WHERE id = p_corrects;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('status', 'unknown_entry');
    END IF;
    INSERT INTO settlement_entries (kind, merchant_id, shop_id, channel, sub_merchant_id, channel_mch_id,
           order_id, refund_id, trade_no, out_trade_no, refund_no, out_refund_no, method, rate_ppm,
           gross, fee, cashback, net, occurred_at, corrects, note, idempotency_key, operator_id)
    VALUES ('adjustment', c.merchant_id, c.shop_id, c.channel, c.sub_merchant_id, c.channel_mch_id,
           c.order_id, c.refund_id, c.trade_no, c.out_trade_no, c.refund_no, c.out_refund_no, c.method,
           c.rate_ppm, p_gross, p_fee, p_cashback, p_gross - p_fee + p_cashback, now(), c.id, p_note,
           p_key, p_operator)
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING * INTO s;
    IF NOT FOUND THEN  -- a concurrent request with the same key booked it first
        SELECT * INTO s FROM settlement_entries WHERE idempotency_key = p_key;
        RETURN gw_settle_adjust_answer(s, p_corrects, p_gross, p_fee, p_cashback, p_note, false);
    END IF;
    RETURN gw_settle_adjust_answer(s, p_corrects, p_gross, p_fee, p_cashback, p_note, true);
END $$;

-- The daily statement (0007) with adjustments shown as such: each line
-- carries `corrects` (and its `note`), the totals count `adjustments`.
-- Everything else is as before; gross/fee/cashback/net include adjustments.
CREATE OR REPLACE FUNCTION gw_statement(p_merchant text, p_shop text, p_date date, p_tz text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    WITH b AS (SELECT * FROM gw_day_bounds(p_date, p_tz)),
    e AS (SELECT s.* FROM settlement_entries s, b
           WHERE s.shop_id = p_shop AND s.occurred_at >= b.day_start AND s.occurred_at < b.day_end),
    tot AS (SELECT count(*) FILTER (WHERE kind = 'payment') AS payments,
                   count(*) FILTER (WHERE kind = 'refund') AS refunds,
                   count(*) FILTER (WHERE kind = 'adjustment') AS adjustments,
                   COALESCE(sum(gross) FILTER (WHERE kind = 'payment'), 0) AS paid,
                   COALESCE(-sum(gross) FILTER (WHERE kind = 'refund'), 0) AS refunded,
                   COALESCE(sum(gross), 0) AS gross, COALESCE(sum(fee), 0) AS fee,
                   COALESCE(sum(cashback), 0) AS cashback, COALESCE(sum(net), 0) AS net
              FROM e)
    SELECT jsonb_build_object(
        'shop_id', sh.id, 'merchant_id', sh.merchant_id, 'date', to_char(p_date, 'YYYY-MM-DD'),
        'timezone', p_tz,
        'from', (SELECT day_start FROM b), 'to', (SELECT day_end FROM b),
        'lines', COALESCE((SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                     'entry_id', id, 'type', kind, 'occurred_at', occurred_at,
                     'local_time', to_char(occurred_at AT TIME ZONE p_tz, 'YYYY-MM-DD HH24:MI:SS'),
                     'trade_no', trade_no, 'out_trade_no', out_trade_no,
                     'refund_no', refund_no, 'out_refund_no', out_refund_no,
                     'channel', channel, 'channel_mch_id', channel_mch_id, 'method', method,
                     'rate_ppm', rate_ppm, 'gross', gross, 'fee', fee, 'cashback', cashback,
                     'net', net, 'corrects', corrects, 'note', note)) ORDER BY occurred_at, id) FROM e),
                     '[]'::jsonb),
        'totals', (SELECT to_jsonb(tot) FROM tot),
        'by_channel', COALESCE((SELECT jsonb_agg(to_jsonb(x) ORDER BY x.channel, x.channel_mch_id) FROM (
                     SELECT channel, channel_mch_id,
                            count(*) FILTER (WHERE kind = 'payment') AS payments,
                            count(*) FILTER (WHERE kind = 'refund') AS refunds,
                            count(*) FILTER (WHERE kind = 'adjustment') AS adjustments,
                            sum(gross) AS gross, sum(fee) AS fee, sum(cashback) AS cashback,
                            sum(net) AS net
                       FROM e GROUP BY channel, channel_mch_id) x), '[]'::jsonb))
      FROM shops sh WHERE sh.id = p_shop AND sh.merchant_id = p_merchant
$$;
