-- 0004_balance: stored value ("余额支付").  The balance is always the sum of
-- the append-only ledger entries and can never go below zero: every
-- movement is one statement that moves the account row (guarded by
-- balance + amount >= 0) and appends its entry in the same transaction.
-- The built-in channel "balance" settles an order or a refund in the same
-- transaction as the ledger movement.

CREATE TABLE balance_accounts (
    merchant_id text NOT NULL REFERENCES merchants(id),
    customer_id text NOT NULL CHECK (length(customer_id) BETWEEN 1 AND 64),
    balance     bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, customer_id)
);

CREATE TABLE balance_entries (
    id            bigserial PRIMARY KEY,
    merchant_id   text NOT NULL,
    customer_id   text NOT NULL,
    amount        bigint NOT NULL CHECK (amount <> 0),   -- + credit, - debit, fen
    balance_after bigint NOT NULL CHECK (balance_after >= 0),
    kind          text NOT NULL CHECK (kind IN ('topup', 'adjust', 'pay', 'refund')),
    order_id      bigint,
    refund_id     bigint,
    reason        text,
    operator_id   text,
    idem_key      text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (merchant_id, customer_id) REFERENCES balance_accounts
);
CREATE INDEX balance_entries_account ON balance_entries (merchant_id, customer_id, id);
CREATE UNIQUE INDEX balance_entries_one_pay ON balance_entries (order_id) WHERE kind = 'pay';
CREATE UNIQUE INDEX balance_entries_one_refund ON balance_entries (refund_id) WHERE kind = 'refund';
CREATE UNIQUE INDEX balance_entries_idem ON balance_entries (merchant_id, customer_id, idem_key)
    WHERE idem_key IS NOT NULL;

-- Moves amount (signed) on an account; NULL when it would go below zero.
CREATE FUNCTION gw_balance_move(p_merchant text, p_customer text, p_amount bigint, p_kind text,
                                p_order bigint, p_refund bigint, p_reason text, p_operator text,
                                p_idem text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_balance bigint;
    v_entry bigint;
BEGIN
    INSERT INTO balance_accounts (merchant_id, customer_id) VALUES (p_merchant, p_customer)
    ON CONFLICT DO NOTHING;
    UPDATE balance_accounts SET balance = balance + p_amount, updated_at = now()
     WHERE merchant_id = p_merchant AND customer_id = p_customer AND balance + p_amount >= 0
    RETURNING balance INTO v_balance;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    INSERT INTO balance_entries (merchant_id, customer_id, amount, balance_after, kind, order_id,
                                 refund_id, reason, operator_id, idem_key)
    VALUES (p_merchant, p_customer, p_amount, v_balance, p_kind, p_order, p_refund, p_reason,
            p_operator, p_idem)
    RETURNING id INTO v_entry;
    RETURN jsonb_build_object('entry_id', v_entry, 'balance', v_balance);
END $$;

-- Operator top-up / adjustment, idempotent on p_idem (a repeat returns the
-- first result).
CREATE FUNCTION gw_balance_adjust(p_merchant text, p_customer text, p_amount bigint, p_kind text,
                                  p_reason text, p_operator text, p_idem text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    e balance_entries;
    v jsonb;
BEGIN
    IF p_idem IS NOT NULL THEN
        SELECT * INTO e FROM balance_entries
         WHERE merchant_id = p_merchant AND customer_id = p_customer AND idem_key = p_idem;
        IF FOUND THEN
            IF e.amount <> p_amount OR e.kind <> p_kind THEN
                RETURN jsonb_build_object('error', 'conflict');
            END IF;
            RETURN jsonb_build_object('entry_id', e.id, 'balance_after', e.balance_after,
                                      'balance', (SELECT balance FROM balance_accounts
                                                   WHERE merchant_id = p_merchant AND customer_id = p_customer),
                                      'repeated', true);
        END IF;
    END IF;
    v := gw_balance_move(p_merchant, p_customer, p_amount, p_kind, NULL, NULL, p_reason, p_operator, p_idem);
    IF v IS NULL THEN
        RETURN jsonb_build_object('error', 'insufficient_balance');
    END IF;
    RETURN v || jsonb_build_object('balance_after', v->'balance');
END $$;

-- Settles a balance order: debit and SUCCESS, or FAILED when the balance
-- does not cover it, in one transaction.  Idempotent: an order that is no
-- longer CREATED is only reported.
CREATE FUNCTION gw_balance_pay(p_trade_no text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    o orders;
    v jsonb;
BEGIN
    SELECT * INTO o FROM orders WHERE trade_no = p_trade_no FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('status', 'NOT_FOUND');
    END IF;
    IF o.status <> 'CREATED' THEN
        RETURN jsonb_build_object('status', o.status, 'code', o.channel_code);
    END IF;
    IF o.customer_id IS NOT NULL THEN
        v := gw_balance_move(o.merchant_id, o.customer_id, -o.amount, 'pay', o.id, NULL, o.subject,
                             NULL, NULL);
    END IF;
    IF v IS NULL THEN
        PERFORM gw_order_transition(o.id, '{CREATED}', 'FAILED',
            jsonb_build_object('channel_code', 'INSUFFICIENT_BALANCE',
                               'channel_msg', 'the balance does not cover the amount'), 'balance');
        RETURN jsonb_build_object('status', 'FAILED', 'code', 'INSUFFICIENT_BALANCE');
    END IF;
    PERFORM gw_order_transition(o.id, '{CREATED}', 'SUCCESS',
        jsonb_build_object('channel_trade_no', 'BAL' || (v->>'entry_id'), 'channel_code', 'SUCCESS'),
        'balance');
    RETURN jsonb_build_object('status', 'SUCCESS', 'balance', v->'balance');
END $$;

-- Settles a balance refund: credit and SUCCESS in one transaction.
CREATE FUNCTION gw_balance_refund(p_refund_no text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    r refunds;
    o orders;
    v jsonb;
BEGIN
    SELECT * INTO r FROM refunds WHERE refund_no = p_refund_no;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('status', 'NOT_FOUND');
    END IF;
    -- lock order before account, the same order as payments take
    SELECT * INTO o FROM orders WHERE id = r.order_id FOR UPDATE;
    SELECT * INTO r FROM refunds WHERE id = r.id FOR UPDATE;
    IF r.status <> 'PROCESSING' THEN
        RETURN jsonb_build_object('status', r.status);
    END IF;
    v := gw_balance_move(o.merchant_id, o.customer_id, r.amount, 'refund', o.id, r.id, r.reason,
                         NULL, NULL);
    PERFORM gw_refund_transition(r.id, 'SUCCESS',
        jsonb_build_object('channel_refund_no', 'BALR' || (v->>'entry_id'), 'channel_code', 'SUCCESS'),
        'balance');
    RETURN jsonb_build_object('status', 'SUCCESS', 'balance', v->'balance');
END $$;
