-- 0001_schema: merchants, shops, channel sub-merchants, orders, refunds,
-- events, notification inbox.  Multi-step writes are SQL functions so that
-- each is one statement, one round trip and one transaction.

CREATE TABLE merchants (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,32}$'),
    name        text NOT NULL,
    secret      text NOT NULL,            -- HMAC key: API requests and notifications
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE shops (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,32}$'),
    merchant_id text NOT NULL REFERENCES merchants(id),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A channel-side merchant number with its credentials.
CREATE TABLE sub_merchants (
    id          bigserial PRIMARY KEY,
    channel     text NOT NULL,
    mch_id      text NOT NULL,
    app_id      text NOT NULL DEFAULT '',
    key         text NOT NULL DEFAULT '',
    private_key text NOT NULL DEFAULT '',
    public_key  text NOT NULL DEFAULT '',
    extra       jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (channel, mch_id)
);

-- Per shop and payment method, a prioritised list of channel bindings.
CREATE TABLE shop_bindings (
    shop_id     text NOT NULL REFERENCES shops(id) ON DELETE CASCADE,
    method      text NOT NULL,
    priority    int  NOT NULL,
    channel     text NOT NULL,
    PRIMARY KEY (shop_id, method, priority)
);

CREATE TABLE binding_sub_merchants (
    shop_id         text NOT NULL,
    method          text NOT NULL,
    priority        int  NOT NULL,
    sub_merchant_id bigint NOT NULL REFERENCES sub_merchants(id),
    position        int  NOT NULL DEFAULT 0,
    PRIMARY KEY (shop_id, method, priority, sub_merchant_id),
    FOREIGN KEY (shop_id, method, priority) REFERENCES shop_bindings ON DELETE CASCADE
);

CREATE SEQUENCE order_id_seq;

CREATE TABLE orders (
    id              bigint PRIMARY KEY,
    trade_no        text NOT NULL UNIQUE,        -- ours; the channel's out_trade_no
    merchant_id     text NOT NULL REFERENCES merchants(id),
    shop_id         text NOT NULL REFERENCES shops(id),
    out_trade_no    text NOT NULL,               -- the merchant's
    amount          bigint NOT NULL CHECK (amount > 0),
    currency        text NOT NULL DEFAULT 'CNY',
    subject         text NOT NULL,
    method          text NOT NULL,
    channel         text NOT NULL,
    sub_merchant_id bigint NOT NULL REFERENCES sub_merchants(id),
    channel_mch_id  text NOT NULL,
    payer_id        text,
    customer_id     text,
    client_ip       text,
    notify_url      text,
    attach          text,
    status          text NOT NULL CHECK (status IN
                    ('CREATED','PENDING','USER_PAYING','SUCCESS','FAILED','CLOSED','UNKNOWN')),
    request_hash    text NOT NULL,
    pay_data        jsonb,
    channel_trade_no text,
    channel_code    text,
    channel_msg     text,
    refunded_amount bigint NOT NULL DEFAULT 0,
    fee             bigint NOT NULL DEFAULT 0,
    settle_amount   bigint NOT NULL DEFAULT 0,
    expire_at       timestamptz NOT NULL,
    paid_at         timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, out_trade_no)
);
CREATE INDEX orders_open_idx ON orders (status, updated_at)
    WHERE status IN ('CREATED','PENDING','USER_PAYING','UNKNOWN');

CREATE TABLE order_events (
    id          bigserial PRIMARY KEY,
    order_id    bigint NOT NULL,
    refund_id   bigint,
    from_status text,
    to_status   text NOT NULL,
    source      text NOT NULL,          -- api, channel, notify, query, task
    detail      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_events_order_idx ON order_events (order_id);

CREATE SEQUENCE refund_id_seq;

CREATE TABLE refunds (
    id              bigint PRIMARY KEY,
    refund_no       text NOT NULL UNIQUE,        -- ours; the channel's out_refund_no
    order_id        bigint NOT NULL REFERENCES orders(id),
    merchant_id     text NOT NULL,
    out_refund_no   text NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),
    reason          text,
    status          text NOT NULL CHECK (status IN ('PROCESSING','SUCCESS','FAILED')),
    channel_refund_no text,
    channel_code    text,
    channel_msg     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    UNIQUE (merchant_id, out_refund_no)
);
CREATE INDEX refunds_open_idx ON refunds (updated_at) WHERE status = 'PROCESSING';

-- Channel notifications exactly as received, verified or not (append-only).
CREATE TABLE notify_inbox (
    id          bigserial PRIMARY KEY,
    channel     text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    headers     text NOT NULL,
    body        text NOT NULL,
    verified    boolean NOT NULL,
    order_id    bigint,
    outcome     text NOT NULL,          -- applied, duplicate, rejected: <reason>
    detail      jsonb
);

-- Merchant API nonces when Redis is unavailable (replay protection).
CREATE TABLE api_nonces (
    merchant_id text NOT NULL,
    nonce       text NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (merchant_id, nonce)
);

-- Create an order, or return the existing one for (merchant, out_trade_no).
CREATE FUNCTION gw_order_create(p jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    o orders;
    v_id bigint;
BEGIN
    SELECT * INTO o FROM orders
     WHERE merchant_id = p->>'merchant_id' AND out_trade_no = p->>'out_trade_no';
    IF FOUND THEN
        RETURN jsonb_build_object('created', false, 'order', to_jsonb(o));
    END IF;
    v_id := nextval('order_id_seq');
    INSERT INTO orders (id, trade_no, merchant_id, shop_id, out_trade_no, amount, currency,
                        subject, method, channel, sub_merchant_id, channel_mch_id, payer_id,
                        customer_id, client_ip, notify_url, attach, status, request_hash,
                        fee, settle_amount, expire_at)
    VALUES (v_id,
            to_char(now() AT TIME ZONE 'Asia/Shanghai', 'YYYYMMDD') || lpad(v_id::text, 14, '0'),
            p->>'merchant_id', p->>'shop_id', p->>'out_trade_no', (p->>'amount')::bigint,
            COALESCE(p->>'currency', 'CNY'), p->>'subject', p->>'method', p->>'channel',
            (p->>'sub_merchant_id')::bigint, p->>'channel_mch_id', p->>'payer_id',
            p->>'customer_id', p->>'client_ip', p->>'notify_url', p->>'attach', 'CREATED',
            p->>'request_hash', COALESCE((p->>'fee')::bigint, 0),
            COALESCE((p->>'settle_amount')::bigint, (p->>'amount')::bigint),
            now() + make_interval(secs => COALESCE((p->>'expire_s')::int, 7200)))
    ON CONFLICT (merchant_id, out_trade_no) DO NOTHING
    RETURNING * INTO o;
    IF NOT FOUND THEN  -- a concurrent identical request won the race
        SELECT * INTO o FROM orders
         WHERE merchant_id = p->>'merchant_id' AND out_trade_no = p->>'out_trade_no';
        RETURN jsonb_build_object('created', false, 'order', to_jsonb(o));
    END IF;
    INSERT INTO order_events (order_id, from_status, to_status, source)
    VALUES (o.id, NULL, 'CREATED', 'api');
    RETURN jsonb_build_object('created', true, 'order', to_jsonb(o));
END $$;

-- Guarded transition: applies only from one of the allowed states; records
-- an event.  A late or duplicate event changes nothing ("changed": false).
CREATE FUNCTION gw_order_transition(p_id bigint, p_from text[], p_to text, p_patch jsonb,
                                    p_source text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    o orders;
    v_from text;
BEGIN
    SELECT status INTO v_from FROM orders WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('changed', false, 'order', NULL);
    END IF;
    IF NOT (v_from = ANY (p_from)) OR (v_from = p_to AND p_patch = '{}'::jsonb) THEN
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
        updated_at = now()
     WHERE id = p_id
    RETURNING * INTO o;
    IF v_from <> p_to THEN
        INSERT INTO order_events (order_id, from_status, to_status, source, detail)
        VALUES (p_id, v_from, p_to, p_source, p_patch - 'pay_data');
    END IF;
    RETURN jsonb_build_object('changed', v_from <> p_to, 'order', to_jsonb(o));
END $$;

-- Create a refund.  The order row is locked, so concurrent refunds of one
-- order are serialised and the sum of refunds not FAILED never exceeds the
-- paid amount.  Idempotent on (merchant, out_refund_no).
CREATE FUNCTION gw_refund_create(p jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    o orders;
    r refunds;
    v_id bigint;
    v_reserved bigint;
BEGIN
    SELECT * INTO o FROM orders
     WHERE merchant_id = p->>'merchant_id' AND trade_no = p->>'trade_no' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('error', 'order_not_found');
    END IF;
    SELECT * INTO r FROM refunds
     WHERE merchant_id = p->>'merchant_id' AND out_refund_no = p->>'out_refund_no';
    IF FOUND THEN
        RETURN jsonb_build_object('created', false, 'refund', to_jsonb(r), 'order', to_jsonb(o));
    END IF;
    IF o.status <> 'SUCCESS' THEN
        RETURN jsonb_build_object('error', 'order_not_paid', 'order', to_jsonb(o));
    END IF;
    SELECT COALESCE(sum(amount), 0) INTO v_reserved FROM refunds
     WHERE order_id = o.id AND status <> 'FAILED';
    IF v_reserved + (p->>'amount')::bigint > o.amount THEN
        RETURN jsonb_build_object('error', 'refund_exceeds_paid', 'order', to_jsonb(o),
                                  'refundable', o.amount - v_reserved);
    END IF;
    v_id := nextval('refund_id_seq');
    INSERT INTO refunds (id, refund_no, order_id, merchant_id, out_refund_no, amount, reason, status)
    VALUES (v_id,
            'R' || to_char(now() AT TIME ZONE 'Asia/Shanghai', 'YYYYMMDD') || lpad(v_id::text, 13, '0'),
            o.id, o.merchant_id, p->>'out_refund_no', (p->>'amount')::bigint, p->>'reason',
            'PROCESSING')
    ON CONFLICT (merchant_id, out_refund_no) DO NOTHING
    RETURNING * INTO r;
    IF NOT FOUND THEN
        SELECT * INTO r FROM refunds
         WHERE merchant_id = p->>'merchant_id' AND out_refund_no = p->>'out_refund_no';
        RETURN jsonb_build_object('created', false, 'refund', to_jsonb(r), 'order', to_jsonb(o));
    END IF;
    INSERT INTO order_events (order_id, refund_id, from_status, to_status, source, detail)
    VALUES (o.id, r.id, NULL, 'REFUND_PROCESSING', 'api', jsonb_build_object('amount', r.amount));
    RETURN jsonb_build_object('created', true, 'refund', to_jsonb(r), 'order', to_jsonb(o));
END $$;

-- Guarded refund transition; keeps orders.refunded_amount = sum of SUCCESS.
CREATE FUNCTION gw_refund_transition(p_id bigint, p_to text, p_patch jsonb, p_source text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    r refunds;
BEGIN
    UPDATE refunds SET
        status = p_to,
        channel_refund_no = COALESCE(NULLIF(p_patch->>'channel_refund_no', ''), channel_refund_no),
        channel_code = COALESCE(p_patch->>'channel_code', channel_code),
        channel_msg = COALESCE(p_patch->>'channel_msg', channel_msg),
        finished_at = CASE WHEN p_to IN ('SUCCESS', 'FAILED') THEN now() ELSE finished_at END,
        updated_at = now()
     WHERE id = p_id AND status = 'PROCESSING' AND p_to <> 'PROCESSING'
    RETURNING * INTO r;
    IF NOT FOUND THEN
        SELECT * INTO r FROM refunds WHERE id = p_id;
        RETURN jsonb_build_object('changed', false, 'refund', to_jsonb(r));
    END IF;
    IF p_to = 'SUCCESS' THEN
        UPDATE orders SET refunded_amount = refunded_amount + r.amount, updated_at = now()
         WHERE id = r.order_id;
    END IF;
    INSERT INTO order_events (order_id, refund_id, from_status, to_status, source, detail)
    VALUES (r.order_id, r.id, 'REFUND_PROCESSING', 'REFUND_' || p_to, p_source, p_patch);
    RETURN jsonb_build_object('changed', true, 'refund', to_jsonb(r));
END $$;

-- Ingest a channel notification: append it to the inbox and, when it is
-- verified and matches the order (channel, merchant number, amount), apply
-- it — all in one transaction, so an acknowledged notification is never
-- lost and a duplicate is never applied twice.
CREATE FUNCTION gw_notify_ingest(p jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    o orders;
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
            ELSIF (p->>'amount')::bigint IS DISTINCT FROM o.amount THEN
                v_outcome := 'rejected: amount mismatch';
            ELSIF p->>'status' = 'SUCCESS' THEN
                v_res := gw_order_transition(o.id,
                    '{CREATED,PENDING,USER_PAYING,UNKNOWN,CLOSED,FAILED}', 'SUCCESS',
                    jsonb_build_object('channel_trade_no', p->>'channel_trade_no',
                                       'channel_code', p->>'raw_code',
                                       'channel_msg', p->>'raw_msg'), 'notify');
                v_outcome := CASE WHEN (v_res->>'changed')::boolean THEN 'applied' ELSE 'duplicate' END;
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

-- Replace the bindings of one shop and payment method in one transaction.
-- p: [{"channel": "swiftpass", "sub_merchant_ids": [1, 2]}, …] in priority order.
CREATE FUNCTION gw_bindings_set(p_shop text, p_method text, p jsonb) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    b jsonb;
    s jsonb;
    i int := 0;
    j int;
BEGIN
    DELETE FROM shop_bindings WHERE shop_id = p_shop AND method = p_method;
    FOR b IN SELECT * FROM jsonb_array_elements(p) LOOP
        INSERT INTO shop_bindings (shop_id, method, priority, channel)
        VALUES (p_shop, p_method, i, b->>'channel');
        j := 0;
        FOR s IN SELECT * FROM jsonb_array_elements(b->'sub_merchant_ids') LOOP
            INSERT INTO binding_sub_merchants (shop_id, method, priority, sub_merchant_id, position)
            VALUES (p_shop, p_method, i, s::text::bigint, j);
            j := j + 1;
        END LOOP;
        i := i + 1;
    END LOOP;
    RETURN i;
END $$;
