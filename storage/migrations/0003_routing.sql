-- 0003_routing: fee rates and cashback fixed on each order, rotation
-- counters (when Redis is down), rerouting of an order whose channel call
-- certainly did not leave, and the shop's routing document that is cached in
-- Redis.

-- Rates in parts per million of the amount (0.38 % = 3800).  The rate in
-- force is future_ppm once future_from is set and reached, else current_ppm.
CREATE TABLE shop_rates (
    shop_id     text NOT NULL REFERENCES shops(id) ON DELETE CASCADE,
    channel     text NOT NULL,
    current_ppm int  NOT NULL CHECK (current_ppm BETWEEN 0 AND 1000000),
    future_ppm  int  CHECK (future_ppm BETWEEN 0 AND 1000000),
    future_from timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shop_id, channel),
    CHECK ((future_ppm IS NULL) = (future_from IS NULL))
);

-- Cashback per shop and payment method, ppm of the amount (default 0).
CREATE TABLE shop_cashback (
    shop_id text NOT NULL REFERENCES shops(id) ON DELETE CASCADE,
    method  text NOT NULL,
    ppm     int  NOT NULL CHECK (ppm BETWEEN 0 AND 1000000),
    PRIMARY KEY (shop_id, method)
);

CREATE TABLE rotation_counters (
    key text PRIMARY KEY,
    n   bigint NOT NULL DEFAULT 0
);

ALTER TABLE orders
    ADD COLUMN rate_ppm int NOT NULL DEFAULT 0,
    ADD COLUMN cashback bigint NOT NULL DEFAULT 0;

-- ppm of amount, rounded half-up to the fen (integers only).
CREATE FUNCTION gw_ppm_of(p_amount bigint, p_ppm int) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT (p_amount * p_ppm + 500000) / 1000000
$$;

CREATE FUNCTION gw_rate_in_force(p_shop text, p_channel text) RETURNS int
LANGUAGE sql STABLE AS $$
    SELECT COALESCE((SELECT CASE WHEN future_from IS NOT NULL AND now() >= future_from
                                 THEN future_ppm ELSE current_ppm END
                       FROM shop_rates WHERE shop_id = p_shop AND channel = p_channel), 0)
$$;

-- Fixes rate, fee, cashback and settlement amount on a new order.
CREATE FUNCTION gw_order_fees() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_cb int;
BEGIN
    NEW.rate_ppm := gw_rate_in_force(NEW.shop_id, NEW.channel);
    NEW.fee := gw_ppm_of(NEW.amount, NEW.rate_ppm);
    SELECT ppm INTO v_cb FROM shop_cashback WHERE shop_id = NEW.shop_id AND method = NEW.method;
    NEW.cashback := gw_ppm_of(NEW.amount, COALESCE(v_cb, 0));
    NEW.settle_amount := NEW.amount - NEW.fee + NEW.cashback;
    RETURN NEW;
END $$;
CREATE TRIGGER orders_fees BEFORE INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION gw_order_fees();

-- Moves a CREATED order to another binding (failover after a call that
-- certainly did not leave); fees follow the new channel's rate.
CREATE FUNCTION gw_order_reroute(p_id bigint, p_channel text, p_sub bigint, p_mch text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    o orders;
BEGIN
    UPDATE orders SET channel = p_channel, sub_merchant_id = p_sub, channel_mch_id = p_mch,
           rate_ppm = gw_rate_in_force(shop_id, p_channel),
           fee = gw_ppm_of(amount, gw_rate_in_force(shop_id, p_channel)),
           settle_amount = amount - gw_ppm_of(amount, gw_rate_in_force(shop_id, p_channel)) + cashback,
           updated_at = now()
     WHERE id = p_id AND status = 'CREATED'
    RETURNING * INTO o;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('changed', false);
    END IF;
    INSERT INTO order_events (order_id, from_status, to_status, source, detail)
    VALUES (p_id, 'CREATED', 'CREATED', 'failover',
            jsonb_build_object('channel', p_channel, 'sub_merchant_id', p_sub));
    RETURN jsonb_build_object('changed', true, 'order', to_jsonb(o));
END $$;

CREATE FUNCTION gw_rotation_next(p_key text) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO rotation_counters (key, n) VALUES (p_key, 1)
    ON CONFLICT (key) DO UPDATE SET n = rotation_counters.n + 1
    RETURNING n
$$;

-- The shop's routing document (cached in Redis, no secrets):
-- {"merchant_id": …, "methods": {"barcode": [{"channel": "swiftpass",
--   "subs": [{"id": 1, "mch_id": "…"}, …]}, …], …}}
CREATE FUNCTION gw_shop_routes(p_shop text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'merchant_id', sh.merchant_id,
        'methods', COALESCE((
            SELECT jsonb_object_agg(m.method, m.bindings) FROM (
                SELECT b.method, jsonb_agg(jsonb_build_object(
                    'channel', b.channel,
                    'subs', COALESCE((SELECT jsonb_agg(jsonb_build_object('id', s.id, 'mch_id', s.mch_id)
                                                       ORDER BY bs.position, s.id)
                                        FROM binding_sub_merchants bs
                                        JOIN sub_merchants s ON s.id = bs.sub_merchant_id
                                       WHERE bs.shop_id = b.shop_id AND bs.method = b.method
                                         AND bs.priority = b.priority), '[]'::jsonb))
                    ORDER BY b.priority) AS bindings
                  FROM shop_bindings b WHERE b.shop_id = sh.id GROUP BY b.method) m), '{}'::jsonb))
      FROM shops sh WHERE sh.id = p_shop
$$;
