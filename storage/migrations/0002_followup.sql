-- 0002_followup: nothing is left in an unknown state forever.
--   * orders not final carry next_check_at: the task runner claims due ones
--     (FOR UPDATE SKIP LOCKED + a lease) and polls / re-queries / reverses /
--     closes them;
--   * refunds carry next_check_at and whether the channel acknowledged them;
--   * merchant notifications are an outbox written in the same transaction
--     as the state change, delivered on a retry schedule.

ALTER TABLE orders
    ADD COLUMN next_check_at  timestamptz,
    ADD COLUMN check_attempts int NOT NULL DEFAULT 0,
    ADD COLUMN lease_owner    text,
    ADD COLUMN lease_until    timestamptz;
CREATE INDEX orders_due_idx ON orders (next_check_at)
    WHERE status IN ('CREATED','PENDING','USER_PAYING','UNKNOWN');

ALTER TABLE refunds
    ADD COLUMN channel_ack    boolean NOT NULL DEFAULT false,
    ADD COLUMN next_check_at  timestamptz,
    ADD COLUMN check_attempts int NOT NULL DEFAULT 0,
    ADD COLUMN lease_owner    text,
    ADD COLUMN lease_until    timestamptz;
CREATE INDEX refunds_due_idx ON refunds (next_check_at) WHERE status = 'PROCESSING';

CREATE TABLE merchant_notifications (
    id              bigserial PRIMARY KEY,
    merchant_id     text NOT NULL,
    order_id        bigint NOT NULL,
    refund_id       bigint,
    event           text NOT NULL,          -- order.paid, refund.succeeded
    url             text NOT NULL,
    payload         jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING','DELIVERED','FAILED')),
    attempts        int NOT NULL DEFAULT 0,
    next_at         timestamptz NOT NULL DEFAULT now(),
    lease_owner     text,
    lease_until     timestamptz,
    last_http_status int,
    last_error      text,
    delivered_by    text,                   -- the node whose attempt succeeded
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);
CREATE UNIQUE INDEX merchant_notifications_once
    ON merchant_notifications (event, order_id, COALESCE(refund_id, 0));
CREATE INDEX merchant_notifications_due ON merchant_notifications (next_at) WHERE status = 'PENDING';

-- The merchant-facing view of an order, used in notifications.
CREATE FUNCTION gw_order_payload(o orders) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'trade_no', o.trade_no, 'out_trade_no', o.out_trade_no, 'merchant_id', o.merchant_id,
        'shop_id', o.shop_id, 'amount', o.amount, 'currency', o.currency, 'method', o.method,
        'status', o.status, 'channel', o.channel, 'channel_trade_no', o.channel_trade_no,
        'refunded_amount', o.refunded_amount, 'attach', o.attach, 'paid_at', o.paid_at,
        'customer_id', o.customer_id))
$$;

-- Re-define the order transition: it now schedules the next check (patch
-- field next_check_ms; a final state clears it) and writes the merchant
-- notification for SUCCESS in the same transaction.
CREATE OR REPLACE FUNCTION gw_order_transition(p_id bigint, p_from text[], p_to text, p_patch jsonb,
                                               p_source text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    o orders;
    v_from text;
    v_final boolean := p_to IN ('SUCCESS', 'FAILED', 'CLOSED');
BEGIN
    SELECT status INTO v_from FROM orders WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('changed', false, 'order', NULL);
    END IF;
    -- same state again (a re-check) reschedules without an event
    IF NOT (v_from = ANY (p_from)) THEN
        SELECT * INTO o FROM orders WHERE id = p_id;
        RETURN jsonb_build_object('changed', false, 'order', to_jsonb(o));
    END IF;
    UPDATE orders SET
        status = p_to,
        pay_data = COALESCE(p_patch->'pay_data', pay_data),
        channel_trade_no = COALESCE(NULLIF(p_patch->>'channel_trade_no', ''), channel_trade_no),
        channel_code = COALESCE(p_patch->>'channel_code', channel_code),
        channel_msg = COALESCE(p_patch->>'channel_msg', channel_msg),
        paid_at = CASE WHEN p_to = 'SUCCESS' THEN COALESCE(paid_at, now()) ELSE paid_at END,
        next_check_at = CASE WHEN v_final THEN NULL
                             WHEN p_patch ? 'next_check_ms'
                             THEN now() + make_interval(secs => (p_patch->>'next_check_ms')::float8 / 1000)
                             ELSE next_check_at END,
        check_attempts = CASE WHEN p_patch ? 'attempt' THEN check_attempts + 1
                              WHEN v_from <> p_to THEN 0 ELSE check_attempts END,
        lease_owner = NULL,
        lease_until = NULL,
        updated_at = now()
     WHERE id = p_id
    RETURNING * INTO o;
    IF v_from <> p_to THEN
        INSERT INTO order_events (order_id, from_status, to_status, source, detail)
        VALUES (p_id, v_from, p_to, p_source, p_patch - 'pay_data' - 'next_check_ms' - 'attempt');
        IF p_to = 'SUCCESS' AND o.notify_url IS NOT NULL THEN
            INSERT INTO merchant_notifications (merchant_id, order_id, event, url, payload)
            VALUES (o.merchant_id, o.id, 'order.paid', o.notify_url,
                    jsonb_build_object('event', 'order.paid', 'order', gw_order_payload(o)))
            ON CONFLICT DO NOTHING;
        END IF;
    END IF;
    RETURN jsonb_build_object('changed', v_from <> p_to, 'order', to_jsonb(o));
END $$;

-- Refund transition, re-defined: SUCCESS also writes the merchant
-- notification; PROCESSING "to" PROCESSING records the channel's
-- acknowledgement and the next check.
CREATE OR REPLACE FUNCTION gw_refund_transition(p_id bigint, p_to text, p_patch jsonb, p_source text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    r refunds;
    o orders;
BEGIN
    IF p_to = 'PROCESSING' THEN
        UPDATE refunds SET
            channel_ack = channel_ack OR COALESCE((p_patch->>'channel_ack')::boolean, false),
            channel_refund_no = COALESCE(NULLIF(p_patch->>'channel_refund_no', ''), channel_refund_no),
            next_check_at = CASE WHEN p_patch ? 'next_check_ms'
                                 THEN now() + make_interval(secs => (p_patch->>'next_check_ms')::float8 / 1000)
                                 ELSE next_check_at END,
            check_attempts = check_attempts + CASE WHEN p_patch ? 'attempt' THEN 1 ELSE 0 END,
            lease_owner = NULL, lease_until = NULL, updated_at = now()
         WHERE id = p_id AND status = 'PROCESSING'
        RETURNING * INTO r;
        IF NOT FOUND THEN
            SELECT * INTO r FROM refunds WHERE id = p_id;
        END IF;
        RETURN jsonb_build_object('changed', false, 'refund', to_jsonb(r));
    END IF;
    UPDATE refunds SET
        status = p_to,
        channel_ack = true,
        channel_refund_no = COALESCE(NULLIF(p_patch->>'channel_refund_no', ''), channel_refund_no),
        channel_code = COALESCE(p_patch->>'channel_code', channel_code),
        channel_msg = COALESCE(p_patch->>'channel_msg', channel_msg),
        finished_at = now(),
        next_check_at = NULL, lease_owner = NULL, lease_until = NULL,
        updated_at = now()
     WHERE id = p_id AND status = 'PROCESSING'
    RETURNING * INTO r;
    IF NOT FOUND THEN
        SELECT * INTO r FROM refunds WHERE id = p_id;
        RETURN jsonb_build_object('changed', false, 'refund', to_jsonb(r));
    END IF;
    IF p_to = 'SUCCESS' THEN
        UPDATE orders SET refunded_amount = refunded_amount + r.amount, updated_at = now()
         WHERE id = r.order_id
        RETURNING * INTO o;
        IF o.notify_url IS NOT NULL THEN
            INSERT INTO merchant_notifications (merchant_id, order_id, refund_id, event, url, payload)
            VALUES (o.merchant_id, o.id, r.id, 'refund.succeeded', o.notify_url,
                    jsonb_build_object('event', 'refund.succeeded', 'order', gw_order_payload(o),
                                       'refund', jsonb_strip_nulls(jsonb_build_object(
                                           'refund_no', r.refund_no, 'out_refund_no', r.out_refund_no,
                                           'amount', r.amount, 'status', r.status,
                                           'finished_at', r.finished_at))))
            ON CONFLICT DO NOTHING;
        END IF;
    END IF;
    INSERT INTO order_events (order_id, refund_id, from_status, to_status, source, detail)
    VALUES (r.order_id, r.id, 'REFUND_PROCESSING', 'REFUND_' || p_to, p_source, p_patch);
    RETURN jsonb_build_object('changed', true, 'refund', to_jsonb(r));
END $$;

-- New orders and refunds are checked after a grace period (next_check_ms
-- given by the caller, 30 s otherwise) unless something sooner is scheduled.
ALTER TABLE orders ALTER COLUMN next_check_at SET DEFAULT now() + interval '30 seconds';
ALTER TABLE refunds ALTER COLUMN next_check_at SET DEFAULT now() + interval '30 seconds';

CREATE FUNCTION gw_set_first_check() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('paygate.next_check_ms', true) IS NOT NULL
       AND current_setting('paygate.next_check_ms', true) <> '' THEN
        NEW.next_check_at := now() + make_interval(
            secs => current_setting('paygate.next_check_ms', true)::float8 / 1000);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER orders_first_check BEFORE INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION gw_set_first_check();
CREATE TRIGGER refunds_first_check BEFORE INSERT ON refunds
    FOR EACH ROW EXECUTE FUNCTION gw_set_first_check();

-- gw_order_create / gw_refund_create take "next_check_ms" from their
-- argument through a transaction-local setting read by the trigger above.
ALTER FUNCTION gw_order_create(jsonb) RENAME TO gw_order_create_v1;
CREATE FUNCTION gw_order_create(p jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('paygate.next_check_ms', COALESCE(p->>'next_check_ms', ''), true);
    RETURN gw_order_create_v1(p);
END $$;
ALTER FUNCTION gw_refund_create(jsonb) RENAME TO gw_refund_create_v1;
CREATE FUNCTION gw_refund_create(p jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('paygate.next_check_ms', COALESCE(p->>'next_check_ms', ''), true);
    RETURN gw_refund_create_v1(p);
END $$;

-- Claims up to p_limit due rows for p_owner for p_lease_ms.  Rows another
-- node holds (row lock or live lease) are skipped, so no job runs twice;
-- a crashed node's lease expires and its rows are taken over.
CREATE FUNCTION gw_claim_orders(p_owner text, p_lease_ms int, p_limit int) RETURNS jsonb
LANGUAGE sql AS $$
    WITH due AS (
        SELECT id FROM orders
         WHERE status IN ('CREATED','PENDING','USER_PAYING','UNKNOWN')
           AND next_check_at <= now()
           AND (lease_until IS NULL OR lease_until < now())
         ORDER BY next_check_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED),
    claimed AS (
        UPDATE orders o SET lease_owner = p_owner,
               lease_until = now() + make_interval(secs => p_lease_ms::float8 / 1000)
          FROM due WHERE o.id = due.id
        RETURNING o.*)
    SELECT COALESCE(jsonb_agg(jsonb_build_object('order', to_jsonb(c),
               'sub', (SELECT to_jsonb(x) FROM (SELECT s.id AS sub_merchant_id, s.channel, s.mch_id,
                       s.app_id, s.key, s.private_key, s.public_key, s.extra::text AS extra
                       FROM sub_merchants s WHERE s.id = c.sub_merchant_id) x),
               'age_ms', (extract(epoch FROM now() - c.created_at) * 1000)::bigint,
               'expired', now() >= c.expire_at)), '[]'::jsonb)
      FROM claimed c
$$;

CREATE FUNCTION gw_claim_refunds(p_owner text, p_lease_ms int, p_limit int) RETURNS jsonb
LANGUAGE sql AS $$
    WITH due AS (
        SELECT id FROM refunds
         WHERE status = 'PROCESSING' AND next_check_at <= now()
           AND (lease_until IS NULL OR lease_until < now())
         ORDER BY next_check_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED),
    claimed AS (
        UPDATE refunds r SET lease_owner = p_owner,
               lease_until = now() + make_interval(secs => p_lease_ms::float8 / 1000)
          FROM due WHERE r.id = due.id
        RETURNING r.*)
    SELECT COALESCE(jsonb_agg(jsonb_build_object('refund', to_jsonb(c), 'order', to_jsonb(o),
               'sub', (SELECT to_jsonb(x) FROM (SELECT s.id AS sub_merchant_id, s.channel, s.mch_id,
                       s.app_id, s.key, s.private_key, s.public_key, s.extra::text AS extra
                       FROM sub_merchants s WHERE s.id = o.sub_merchant_id) x))), '[]'::jsonb)
      FROM claimed c JOIN orders o ON o.id = c.order_id
$$;

-- Notifications are claimed at most p_per_merchant per merchant, counting
-- the ones already in flight (leased), so one slow merchant endpoint cannot
-- take every delivery slot.
CREATE FUNCTION gw_claim_notifications(p_owner text, p_lease_ms int, p_limit int,
                                       p_per_merchant int) RETURNS jsonb
LANGUAGE sql AS $$
    WITH ranked AS (
        SELECT id, next_at, lease_until,
               row_number() OVER (PARTITION BY merchant_id
                                  ORDER BY (lease_until IS NOT NULL AND lease_until >= now()) DESC, next_at) AS rn
          FROM merchant_notifications
         WHERE status = 'PENDING'
           AND (next_at <= now() OR (lease_until IS NOT NULL AND lease_until >= now()))),
    due AS (
        SELECT n.id FROM merchant_notifications n
         WHERE n.id IN (SELECT id FROM ranked
                         WHERE rn <= p_per_merchant AND next_at <= now()
                           AND (lease_until IS NULL OR lease_until < now()))
         ORDER BY n.next_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED),
    claimed AS (
        UPDATE merchant_notifications n SET lease_owner = p_owner,
               lease_until = now() + make_interval(secs => p_lease_ms::float8 / 1000)
          FROM due WHERE n.id = due.id
        RETURNING n.*)
    SELECT COALESCE(jsonb_agg(jsonb_build_object('id', c.id, 'merchant_id', c.merchant_id,
               'url', c.url, 'payload', c.payload, 'attempts', c.attempts, 'event', c.event,
               'secret', m.secret)), '[]'::jsonb)
      FROM claimed c JOIN merchants m ON m.id = c.merchant_id
$$;

-- Records one delivery attempt.  p_next_ms NULL: no more attempts (FAILED)
-- unless delivered.  Only the lease holder may record (a node whose lease
-- expired mid-attempt cannot overwrite the new holder's result).
CREATE FUNCTION gw_notification_attempt(p_id bigint, p_owner text, p_delivered boolean,
                                        p_http_status int, p_error text, p_next_ms int) RETURNS jsonb
LANGUAGE sql AS $$
    UPDATE merchant_notifications SET
        attempts = attempts + 1,
        status = CASE WHEN p_delivered THEN 'DELIVERED' WHEN p_next_ms IS NULL THEN 'FAILED' ELSE 'PENDING' END,
        delivered_at = CASE WHEN p_delivered THEN now() ELSE NULL END,
        delivered_by = CASE WHEN p_delivered THEN p_owner ELSE NULL END,
        next_at = CASE WHEN p_next_ms IS NULL THEN next_at
                       ELSE now() + make_interval(secs => p_next_ms::float8 / 1000) END,
        last_http_status = p_http_status,
        last_error = p_error,
        lease_owner = NULL, lease_until = NULL
     WHERE id = p_id AND status = 'PENDING' AND lease_owner = p_owner
    RETURNING jsonb_build_object('id', id, 'status', status, 'attempts', attempts)
$$;
