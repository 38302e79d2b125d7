-- 0007_settlement: settlement entries written from the order event log,
-- daily statements per shop, and reconciliation against channel bills.
--
--   * settlement_entries is insert-only (a trigger refuses UPDATE and
--     DELETE): one entry per source event (unique), so re-driving the
--     consumer from any point inserts nothing twice.  A correction is a new
--     entry (kind 'adjustment'), never an update.
--   * The consumer (gw_settle_run, called by the task runner every tick)
--     reads order_events in order of their transaction: every event whose
--     transaction ended before the oldest transaction still running is
--     visible and final, so a watermark on transaction ids (not on event
--     ids, which are allocated before commit and may become visible out of
--     order) never skips an event.  The watermark row is taken with
--     FOR UPDATE SKIP LOCKED: one node runs the consumer at a time.
--   * Amounts are integer fen.  A payment entry takes the fee and cashback
--     fixed on the order (0003).  A refund returns fee and cashback in
--     proportion, computed on the cumulative refunded amount so that the
--     parts telescope: after refunds totalling R of an order of amount A,
--     exactly round_half_up(fee * R / A) of the fee has been returned (a full
--     refund returns the whole fee, whatever the number of refunds).

ALTER TABLE order_events ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX order_events_txid_idx ON order_events (txid);

CREATE TABLE settlement_entries (
    id              bigserial PRIMARY KEY,
    source_event_id bigint UNIQUE,            -- order_events.id; NULL only for adjustments
    kind            text NOT NULL CHECK (kind IN ('payment', 'refund', 'adjustment')),
    merchant_id     text NOT NULL,
    shop_id         text NOT NULL,
    channel         text NOT NULL,
    sub_merchant_id bigint NOT NULL,
    channel_mch_id  text NOT NULL,
    order_id        bigint NOT NULL,
    refund_id       bigint,
    trade_no        text NOT NULL,
    out_trade_no    text NOT NULL,
    refund_no       text,
    out_refund_no   text,
    method          text NOT NULL,
    rate_ppm        int NOT NULL,
    gross           bigint NOT NULL,          -- + paid, - refunded (fen)
    fee             bigint NOT NULL,          -- + charged, - returned
    cashback        bigint NOT NULL,          -- + granted, - clawed back
    net             bigint NOT NULL CHECK (net = gross - fee + cashback),
    occurred_at     timestamptz NOT NULL,     -- the event's time: decides the business day
    corrects        bigint REFERENCES settlement_entries(id),
    note            text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX settlement_entries_one_payment ON settlement_entries (order_id)
    WHERE kind = 'payment';
CREATE UNIQUE INDEX settlement_entries_one_refund ON settlement_entries (refund_id)
    WHERE kind = 'refund';
CREATE INDEX settlement_entries_shop_day ON settlement_entries (shop_id, occurred_at);

CREATE FUNCTION gw_settlement_insert_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'settlement_entries is insert-only: correct with a new entry'
        USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER settlement_entries_insert_only BEFORE UPDATE OR DELETE ON settlement_entries
    FOR EACH ROW EXECUTE FUNCTION gw_settlement_insert_only();

-- The consumer's watermark: every event with txid < watermark has been consumed.
CREATE TABLE settlement_cursor (
    name        text PRIMARY KEY,
    watermark   xid8 NOT NULL,
    events      bigint NOT NULL DEFAULT 0,   -- events consumed (statistics)
    entries     bigint NOT NULL DEFAULT 0,   -- entries inserted (statistics)
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO settlement_cursor (name, watermark) VALUES ('main', '0'::xid8);

-- round_half_up(part * num / den) for non-negative integers
CREATE FUNCTION gw_prorate(p_part bigint, p_num bigint, p_den bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_den <= 0 THEN 0
                ELSE floor((p_part::numeric * p_num * 2 + p_den) / (2 * p_den::numeric))::bigint END
$$;

-- The entry an event stands for (NULL when it stands for none): a pure
-- function of the event log, orders and refunds, so a re-drive recomputes
-- exactly what the first run wrote.
CREATE FUNCTION gw_settle_entry_for(e order_events) RETURNS settlement_entries
LANGUAGE plpgsql STABLE AS $$
DECLARE
    o orders;
    r refunds;
    s settlement_entries;
    v_before bigint;
    v_after bigint;
BEGIN
    IF e.to_status NOT IN ('SUCCESS', 'REFUND_SUCCESS') THEN
        RETURN NULL;
    END IF;
    SELECT * INTO o FROM orders WHERE id = e.order_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    s.source_event_id := e.id;
    s.merchant_id := o.merchant_id;
    s.shop_id := o.shop_id;
    s.channel := o.channel;
    s.sub_merchant_id := o.sub_merchant_id;
    s.channel_mch_id := o.channel_mch_id;
    s.order_id := o.id;
    s.trade_no := o.trade_no;
    s.out_trade_no := o.out_trade_no;
    s.method := o.method;
    s.rate_ppm := o.rate_ppm;
    s.occurred_at := e.created_at;
    IF e.to_status = 'SUCCESS' THEN
        s.kind := 'payment';
        s.gross := o.amount;
        s.fee := o.fee;
        s.cashback := o.cashback;
    ELSE
        SELECT * INTO r FROM refunds WHERE id = e.refund_id;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        -- refunds of this order that succeeded before this one (event order)
        SELECT COALESCE(sum(r2.amount), 0) INTO v_before
          FROM order_events e2 JOIN refunds r2 ON r2.id = e2.refund_id
         WHERE e2.order_id = e.order_id AND e2.to_status = 'REFUND_SUCCESS' AND e2.id < e.id;
        v_after := v_before + r.amount;
        s.kind := 'refund';
        s.refund_id := r.id;
        s.refund_no := r.refund_no;
        s.out_refund_no := r.out_refund_no;
        s.gross := -r.amount;
        s.fee := -(gw_prorate(o.fee, v_after, o.amount) - gw_prorate(o.fee, v_before, o.amount));
        s.cashback := -(gw_prorate(o.cashback, v_after, o.amount) - gw_prorate(o.cashback, v_before, o.amount));
    END IF;
    s.net := s.gross - s.fee + s.cashback;
    RETURN s;
END $$;

-- Inserts the entries of the given events; returns how many were new.
CREATE FUNCTION gw_settle_events(p_ids bigint[]) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_n bigint;
BEGIN
    WITH ins AS (
        INSERT INTO settlement_entries (source_event_id, kind, merchant_id, shop_id, channel,
               sub_merchant_id, channel_mch_id, order_id, refund_id, trade_no, out_trade_no,
               refund_no, out_refund_no, method, rate_ppm, gross, fee, cashback, net, occurred_at)
        SELECT (x).source_event_id, (x).kind, (x).merchant_id, (x).shop_id, (x).channel,
               (x).sub_merchant_id, (x).channel_mch_id, (x).order_id, (x).refund_id, (x).trade_no,
               (x).out_trade_no, (x).refund_no, (x).out_refund_no, (x).method, (x).rate_ppm,
               (x).gross, (x).fee, (x).cashback, (x).net, (x).occurred_at
          FROM (SELECT gw_settle_entry_for(e) AS x FROM order_events e
                 WHERE e.id = ANY (p_ids) ORDER BY e.id) q
         WHERE (x).kind IS NOT NULL  -- (a composite IS NOT NULL needs every field)
        ORDER BY (x).source_event_id
        ON CONFLICT DO NOTHING
        RETURNING 1)
    SELECT count(*) INTO v_n FROM ins;
    RETURN v_n;
END $$;

-- One consumer step: the events of transactions that ended before the
-- oldest one still running, up to p_limit, then the watermark moves.
-- {"busy": true} when another node holds the cursor.
CREATE FUNCTION gw_settle_run(p_limit int) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    c settlement_cursor;
    v_horizon xid8;
    v_ids bigint[];
    v_last xid8;
    v_new bigint := 0;
    v_txns bigint;
BEGIN
    SELECT * INTO c FROM settlement_cursor WHERE name = 'main' FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('busy', true);
    END IF;
    v_horizon := pg_snapshot_xmin(pg_current_snapshot());
    -- whole transactions only, the oldest p_limit of them
    SELECT max(t.txid), count(*) INTO v_last, v_txns FROM (
        SELECT DISTINCT txid FROM order_events
         WHERE txid >= c.watermark AND txid < v_horizon
         ORDER BY txid LIMIT p_limit + 1) t;
    IF v_last IS NULL THEN
        IF v_horizon > c.watermark THEN
            UPDATE settlement_cursor SET watermark = v_horizon, updated_at = now() WHERE name = 'main';
        END IF;
        RETURN jsonb_build_object('events', 0, 'entries', 0);
    END IF;
    IF v_txns > p_limit THEN  -- more than a batch: stop before the last one
        SELECT max(t.txid) INTO v_last FROM (
            SELECT DISTINCT txid FROM order_events
             WHERE txid >= c.watermark AND txid < v_horizon
             ORDER BY txid LIMIT p_limit) t;
    END IF;
    SELECT array_agg(id ORDER BY id) INTO v_ids FROM order_events
     WHERE txid >= c.watermark AND txid <= v_last;
    v_new := gw_settle_events(v_ids);
    UPDATE settlement_cursor SET
        watermark = CASE WHEN v_txns > p_limit THEN (v_last::text::numeric + 1)::text::xid8
                    ELSE v_horizon END,
        events = events + COALESCE(array_length(v_ids, 1), 0),
        entries = entries + v_new,
        updated_at = now()
     WHERE name = 'main';
    RETURN jsonb_build_object('events', COALESCE(array_length(v_ids, 1), 0), 'entries', v_new,
                              'more', v_txns > p_limit);
END $$;

-- Re-drive from an event id: recomputes the entry of every finished event
-- from p_from on, inserts the ones missing and compares the ones present.
-- Entries are never changed: "differing" counts stored entries whose
-- recomputation differs (an operator then books an adjustment).
CREATE FUNCTION gw_settle_redrive(p_from bigint) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_horizon xid8 := pg_snapshot_xmin(pg_current_snapshot());
    v_ids bigint[];
    v_new bigint;
    v_same bigint;
    v_diff bigint;
BEGIN
    SELECT array_agg(id ORDER BY id) INTO v_ids FROM order_events
     WHERE id >= p_from AND txid < v_horizon;
    v_new := COALESCE(gw_settle_events(COALESCE(v_ids, '{}')), 0);
    SELECT count(*) FILTER (WHERE (x).gross = s.gross AND (x).fee = s.fee
                                AND (x).cashback = s.cashback AND (x).net = s.net
                                AND (x).kind = s.kind AND (x).order_id = s.order_id
                                AND (x).refund_id IS NOT DISTINCT FROM s.refund_id
                                AND (x).occurred_at = s.occurred_at),
           count(*) FILTER (WHERE NOT ((x).gross = s.gross AND (x).fee = s.fee
                                AND (x).cashback = s.cashback AND (x).net = s.net
                                AND (x).kind = s.kind AND (x).order_id = s.order_id
                                AND (x).refund_id IS NOT DISTINCT FROM s.refund_id
                                AND (x).occurred_at = s.occurred_at))
      INTO v_same, v_diff
      FROM (SELECT gw_settle_entry_for(e) AS x FROM order_events e
             WHERE e.id = ANY (COALESCE(v_ids, '{}'))) q
      JOIN settlement_entries s ON s.source_event_id = (q.x).source_event_id
     WHERE (q.x).kind IS NOT NULL;
    RETURN jsonb_build_object('from_event_id', p_from,
                              'events', COALESCE(array_length(v_ids, 1), 0),
                              'inserted', v_new, 'identical', v_same - v_new, 'differing', v_diff);
END $$;

-- The business day [start, end) of p_date in time zone p_tz.
CREATE FUNCTION gw_day_bounds(p_date date, p_tz text, OUT day_start timestamptz, OUT day_end timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT (p_date::timestamp AT TIME ZONE p_tz), ((p_date + 1)::timestamp AT TIME ZONE p_tz)
$$;

-- The daily statement of a shop: one line per entry, totals, and totals per
-- channel and sub-merchant.  NULL when the shop is not the merchant's.
CREATE FUNCTION gw_statement(p_merchant text, p_shop text, p_date date, p_tz text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    WITH b AS (SELECT * FROM gw_day_bounds(p_date, p_tz)),
    e AS (SELECT s.* FROM settlement_entries s, b
           WHERE s.shop_id = p_shop AND s.occurred_at >= b.day_start AND s.occurred_at < b.day_end),
    tot AS (SELECT count(*) FILTER (WHERE kind = 'payment') AS payments,
                   count(*) FILTER (WHERE kind = 'refund') AS refunds,
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
                     'net', net, 'note', note)) ORDER BY occurred_at, id) FROM e), '[]'::jsonb),
        'totals', (SELECT to_jsonb(tot) FROM tot),
        'by_channel', COALESCE((SELECT jsonb_agg(to_jsonb(x) ORDER BY x.channel, x.channel_mch_id) FROM (
                     SELECT channel, channel_mch_id,
                            count(*) FILTER (WHERE kind = 'payment') AS payments,
                            count(*) FILTER (WHERE kind = 'refund') AS refunds,
                            sum(gross) AS gross, sum(fee) AS fee, sum(cashback) AS cashback,
                            sum(net) AS net
                       FROM e GROUP BY channel, channel_mch_id) x), '[]'::jsonb))
      FROM shops sh WHERE sh.id = p_shop AND sh.merchant_id = p_merchant
$$;

-- ---------------------------------------------------------------------------
-- Reconciliation against a channel's bill

CREATE TABLE reconciliations (
    id          bigserial PRIMARY KEY,
    channel     text NOT NULL,
    bill_date   date NOT NULL,
    mch_id      text,                       -- NULL: every merchant number of the channel
    lines       int NOT NULL,
    findings    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- p_rows: the bill's lines, parsed by paygated (core/settle.c):
--   [{"kind": "pay"|"refund", "trade_no", "refund_no"?, "amount" (fen),
--     "status": "SUCCESS", "mch_id", "channel_trade_no"?, "time"?}, …]
-- Findings:
--   missing_ours    a bill line we have no record of (for this channel);
--   missing_theirs  our SUCCESS payment / refund of the day (by paid_at /
--                   finished_at in the business day) that the bill lacks;
--   mismatch        both have it, but the amount differs ("amount") or ours
--                   is not SUCCESS ("status").  An order still open (CREATED,
--                   PENDING, USER_PAYING, UNKNOWN) or a refund PROCESSING
--                   that the bill names as paid is due for a query now
--                   ("requery": true); the follow-up task settles it.
CREATE FUNCTION gw_reconcile(p_channel text, p_date date, p_tz text, p_mch text, p_rows jsonb)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    b record;
    v_missing_ours jsonb := '[]';
    v_missing_theirs jsonb := '[]';
    v_mismatch jsonb := '[]';
    x jsonb;
    o orders;
    r refunds;
    v_requeried int := 0;
    v_id bigint;
    v_out jsonb;
BEGIN
    SELECT * INTO b FROM gw_day_bounds(p_date, p_tz);
    FOR x IN SELECT * FROM jsonb_array_elements(p_rows) LOOP
        IF x->>'kind' = 'pay' THEN
            SELECT * INTO o FROM orders WHERE trade_no = x->>'trade_no' AND channel = p_channel;
            IF NOT FOUND THEN
                v_missing_ours := v_missing_ours || jsonb_build_array(x);
                CONTINUE;
            END IF;
            IF o.amount <> (x->>'amount')::bigint THEN
                v_mismatch := v_mismatch || jsonb_build_array(jsonb_build_object(
                    'kind', 'amount', 'trade_no', o.trade_no, 'ours', o.amount,
                    'theirs', (x->>'amount')::bigint, 'status', o.status));
            ELSIF o.status <> 'SUCCESS' THEN
                IF o.status IN ('CREATED', 'PENDING', 'USER_PAYING', 'UNKNOWN') THEN
                    UPDATE orders SET next_check_at = now() WHERE id = o.id;
                    v_requeried := v_requeried + 1;
                END IF;
                v_mismatch := v_mismatch || jsonb_build_array(jsonb_build_object(
                    'kind', 'status', 'trade_no', o.trade_no, 'ours', o.status,
                    'theirs', x->>'status', 'amount', o.amount,
                    'requery', o.status IN ('CREATED', 'PENDING', 'USER_PAYING', 'UNKNOWN')));
            END IF;
        ELSE
            SELECT r2.* INTO r FROM refunds r2 JOIN orders o2 ON o2.id = r2.order_id
             WHERE r2.refund_no = x->>'refund_no' AND o2.channel = p_channel;
            IF NOT FOUND THEN
                v_missing_ours := v_missing_ours || jsonb_build_array(x);
                CONTINUE;
            END IF;
            IF r.amount <> (x->>'amount')::bigint THEN
                v_mismatch := v_mismatch || jsonb_build_array(jsonb_build_object(
                    'kind', 'amount', 'refund_no', r.refund_no, 'ours', r.amount,
                    'theirs', (x->>'amount')::bigint, 'status', r.status));
            ELSIF r.status <> 'SUCCESS' THEN
                IF r.status = 'PROCESSING' THEN
                    UPDATE refunds SET next_check_at = now() WHERE id = r.id;
                    v_requeried := v_requeried + 1;
                END IF;
                v_mismatch := v_mismatch || jsonb_build_array(jsonb_build_object(
                    'kind', 'status', 'refund_no', r.refund_no, 'ours', r.status,
                    'theirs', x->>'status', 'amount', r.amount,
                    'requery', r.status = 'PROCESSING'));
            END IF;
        END IF;
    END LOOP;
    -- ours, paid or refunded that day, absent from the bill
    SELECT COALESCE(jsonb_agg(jsonb_build_object('kind', 'pay', 'trade_no', o2.trade_no,
               'amount', o2.amount, 'mch_id', o2.channel_mch_id, 'paid_at', o2.paid_at)
               ORDER BY o2.id), '[]')
      INTO v_out
      FROM orders o2
     WHERE o2.channel = p_channel AND o2.status = 'SUCCESS'
       AND o2.paid_at >= b.day_start AND o2.paid_at < b.day_end
       AND (p_mch IS NULL OR o2.channel_mch_id = p_mch)
       AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_rows) y
                        WHERE y->>'kind' = 'pay' AND y->>'trade_no' = o2.trade_no);
    v_missing_theirs := v_missing_theirs || v_out;
    SELECT COALESCE(jsonb_agg(jsonb_build_object('kind', 'refund', 'refund_no', r2.refund_no,
               'trade_no', o2.trade_no, 'amount', r2.amount, 'mch_id', o2.channel_mch_id,
               'finished_at', r2.finished_at) ORDER BY r2.id), '[]')
      INTO v_out
      FROM refunds r2 JOIN orders o2 ON o2.id = r2.order_id
     WHERE o2.channel = p_channel AND r2.status = 'SUCCESS'
       AND r2.finished_at >= b.day_start AND r2.finished_at < b.day_end
       AND (p_mch IS NULL OR o2.channel_mch_id = p_mch)
       AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_rows) y
                        WHERE y->>'kind' = 'refund' AND y->>'refund_no' = r2.refund_no);
    v_missing_theirs := v_missing_theirs || v_out;
    v_out := jsonb_build_object('missing_ours', v_missing_ours, 'missing_theirs', v_missing_theirs,
                                'mismatch', v_mismatch);
    INSERT INTO reconciliations (channel, bill_date, mch_id, lines, findings)
    VALUES (p_channel, p_date, p_mch, jsonb_array_length(p_rows), v_out)
    RETURNING id INTO v_id;
    RETURN v_out || jsonb_build_object('id', v_id, 'channel', p_channel,
                                       'date', to_char(p_date, 'YYYY-MM-DD'), 'timezone', p_tz,
                                       'lines', jsonb_array_length(p_rows),
                                       'requeried', v_requeried,
                                       'findings', jsonb_array_length(v_missing_ours)
                                                 + jsonb_array_length(v_missing_theirs)
                                                 + jsonb_array_length(v_mismatch));
END $$;
