-- 0005_reversal: one channel conversation per order at a time, and the
-- record of a reversal that came after a payment.

-- Takes an order's lease for a short channel conversation (the merchant's
-- query of a waiting order).  Not taken while a task holds it, so the API
-- and the follow-up tasks never talk to the channel about one order at the
-- same time (a query that sees "paid" while a reverse is under way).
-- The next transition of the order releases it.
CREATE FUNCTION gw_order_lease(p_id bigint, p_owner text, p_ms int) RETURNS jsonb
LANGUAGE sql AS $$
    UPDATE orders SET lease_owner = p_owner,
           lease_until = now() + make_interval(secs => p_ms::float8 / 1000)
     WHERE id = p_id AND status IN ('CREATED','PENDING','USER_PAYING','UNKNOWN')
       AND (lease_until IS NULL OR lease_until < now())
    RETURNING to_jsonb(true)
$$;

-- A reverse (cancel) that the channel carried out after the payment went
-- through returned the customer's money: the order stays SUCCESS (it was
-- paid, and the merchant may have been told so) and a full refund of what
-- is left is recorded as SUCCESS, with its merchant notification.
CREATE FUNCTION gw_order_reversed_after_payment(p_id bigint, p_detail jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    o orders;
    v_left bigint;
    v_id bigint;
    r refunds;
BEGIN
    SELECT * INTO o FROM orders WHERE id = p_id FOR UPDATE;
    IF NOT FOUND OR o.status <> 'SUCCESS' THEN
        RETURN jsonb_build_object('recorded', false);
    END IF;
    SELECT o.amount - COALESCE(sum(amount), 0) INTO v_left FROM refunds
     WHERE order_id = o.id AND status <> 'FAILED';
    IF v_left <= 0 THEN
        RETURN jsonb_build_object('recorded', false);
    END IF;
    v_id := nextval('refund_id_seq');
    INSERT INTO refunds (id, refund_no, order_id, merchant_id, out_refund_no, amount, reason, status,
                         channel_ack)
    VALUES (v_id,
            'R' || to_char(now() AT TIME ZONE 'Asia/Shanghai', 'YYYYMMDD') || lpad(v_id::text, 13, '0'),
            o.id, o.merchant_id, 'REVERSAL-' || o.trade_no, v_left,
            'reversed at the channel after the payment', 'PROCESSING', true)
    ON CONFLICT (merchant_id, out_refund_no) DO NOTHING
    RETURNING * INTO r;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('recorded', false);
    END IF;
    INSERT INTO order_events (order_id, refund_id, from_status, to_status, source, detail)
    VALUES (o.id, r.id, 'SUCCESS', 'REVERSED_AFTER_PAYMENT', 'task', p_detail);
    PERFORM gw_refund_transition(r.id, 'SUCCESS', p_detail, 'reverse');
    RETURN jsonb_build_object('recorded', true, 'refund_no', r.refund_no, 'amount', v_left);
END $$;

-- A new order is leased to the node that creates it for as long as its
-- channel call may take (p.lease_ms, p.lease_owner), so no follow-up task
-- touches it while the request that created it is still talking to the
-- channel.  The first transition releases the lease.
CREATE OR REPLACE FUNCTION gw_set_first_check() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF COALESCE(current_setting('paygate.next_check_ms', true), '') <> '' THEN
        NEW.next_check_at := now() + make_interval(
            secs => current_setting('paygate.next_check_ms', true)::float8 / 1000);
    END IF;
    IF TG_TABLE_NAME = 'orders' AND COALESCE(current_setting('paygate.lease_ms', true), '') <> '' THEN
        NEW.lease_owner := current_setting('paygate.lease_owner', true);
        NEW.lease_until := now() + make_interval(
            secs => current_setting('paygate.lease_ms', true)::float8 / 1000);
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION gw_order_create(p jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('paygate.next_check_ms', COALESCE(p->>'next_check_ms', ''), true);
    PERFORM set_config('paygate.lease_ms', COALESCE(p->>'lease_ms', ''), true);
    PERFORM set_config('paygate.lease_owner', COALESCE(p->>'lease_owner', ''), true);
    RETURN gw_order_create_v1(p);
END $$;

-- Refunds likewise: leased to the request creating them until its channel
-- call is over, so the follow-up does not send them a second time meanwhile.
CREATE OR REPLACE FUNCTION gw_set_first_check() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF COALESCE(current_setting('paygate.next_check_ms', true), '') <> '' THEN
        NEW.next_check_at := now() + make_interval(
            secs => current_setting('paygate.next_check_ms', true)::float8 / 1000);
    END IF;
    IF COALESCE(current_setting('paygate.lease_ms', true), '') <> '' THEN
        NEW.lease_owner := current_setting('paygate.lease_owner', true);
        NEW.lease_until := now() + make_interval(
            secs => current_setting('paygate.lease_ms', true)::float8 / 1000);
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION gw_refund_create(p jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('paygate.next_check_ms', COALESCE(p->>'next_check_ms', ''), true);
    PERFORM set_config('paygate.lease_ms', COALESCE(p->>'lease_ms', ''), true);
    PERFORM set_config('paygate.lease_owner', COALESCE(p->>'lease_owner', ''), true);
    RETURN gw_refund_create_v1(p);
END $$;
