-- 0008: channel notifications by kind, and no silent resurrection.
--   * a refund notification settles the refund it names (never the order);
--   * a "paid" notification for an order we closed or failed does not flip
--     it: the customer's money may already have gone back (a reverse), so it
--     is recorded as a conflict for the operator and the order is left as it
--     is (docs/operations.md: notify_inbox outcomes).
CREATE OR REPLACE FUNCTION gw_notify_ingest(p jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    o orders;
    r refunds;
    v_outcome text;
    v_res jsonb;
    v_order_id bigint;
BEGIN
    IF NOT COALESCE((p->>'verified')::boolean, false) THEN
        v_outcome := 'rejected: ' || COALESCE(p->>'reason', 'not verified');
    ELSE
        SELECT * INTO o FROM orders WHERE trade_no = p->>'out_trade_no' FOR UPDATE;
        IF NOT FOUND THEN
            v_outcome := 'rejected: unknown order';
        ELSE
            v_order_id := o.id;
            IF o.channel <> p->>'channel' OR o.channel_mch_id <> p->>'mch_id' THEN
                v_outcome := 'rejected: merchant number mismatch';
            ELSIF p->>'kind' = 'refund' THEN
                SELECT * INTO r FROM refunds WHERE refund_no = p->>'out_refund_no' AND order_id = o.id;
                IF NOT FOUND THEN
                    v_outcome := 'rejected: unknown refund';
                ELSIF p ? 'amount' AND (p->>'amount')::bigint <> r.amount THEN
                    v_outcome := 'rejected: refund amount mismatch';
                ELSIF p->>'status' IN ('SUCCESS', 'FAILED') THEN
                    v_res := gw_refund_transition(r.id, p->>'status',
                        jsonb_build_object('channel_code', p->>'raw_code', 'channel_msg', p->>'raw_msg'),
                        'notify');
                    v_outcome := CASE WHEN (v_res->>'changed')::boolean THEN 'applied' ELSE 'duplicate' END;
                ELSE
                    v_outcome := 'ignored: refund status ' || COALESCE(p->>'status', '?');
                END IF;
            ELSIF (p->>'amount')::bigint IS DISTINCT FROM o.amount THEN
                v_outcome := 'rejected: amount mismatch';
            ELSIF p->>'status' = 'SUCCESS' THEN
                IF o.status IN ('CLOSED', 'FAILED') THEN
                    v_outcome := 'conflict: the channel says paid, the order is ' || o.status;
                ELSE
                    v_res := gw_order_transition(o.id, '{CREATED,PENDING,USER_PAYING,UNKNOWN}', 'SUCCESS',
                        jsonb_build_object('channel_trade_no', p->>'channel_trade_no',
                                           'channel_code', p->>'raw_code',
                                           'channel_msg', p->>'raw_msg'), 'notify');
                    v_outcome := CASE WHEN (v_res->>'changed')::boolean THEN 'applied' ELSE 'duplicate' END;
                END IF;
            ELSE
                v_outcome := 'ignored: status ' || COALESCE(p->>'status', '?');
            END IF;
        END IF;
    END IF;
    INSERT INTO notify_inbox (channel, headers, body, verified, order_id, outcome, detail)
    VALUES (p->>'channel', COALESCE(p->>'headers', ''), COALESCE(p->>'body', ''),
            COALESCE((p->>'verified')::boolean, false), v_order_id, v_outcome,
            p - 'headers' - 'body');
    RETURN jsonb_build_object('outcome', v_outcome, 'order', v_res->'order');
END $$;
