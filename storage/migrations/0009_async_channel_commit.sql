-- 0009: the transition that records a channel's first answer to a new order
-- commits without waiting for the WAL flush (synchronous_commit off for that
-- transaction only).  The order itself was committed durably before the
-- channel was called, so a crash can lose at most this transition: the
-- order is then CREATED again and the follow-up task asks the channel,
-- which knows the truth.  Halves the durable commits of a c-to-b order
-- (docs/performance.md).  Every other write stays synchronous.
ALTER FUNCTION gw_order_transition(bigint, text[], text, jsonb, text) RENAME TO gw_order_transition_v2;
CREATE FUNCTION gw_order_transition(p_id bigint, p_from text[], p_to text, p_patch jsonb,
                                    p_source text) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF p_source = 'channel' AND p_from = '{CREATED}' THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    RETURN gw_order_transition_v2(p_id, p_from, p_to, p_patch, p_source);
END $$;
