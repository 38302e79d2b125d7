-- 0006: claiming notifications must re-check, on the row it locks, that the
-- row is still due and unleased.  The per-merchant ranking is computed in a
-- CTE (a snapshot taken before the lock); a row another node claimed and
-- committed in between is no longer locked when this node reaches it, so
-- only conditions in the locking query's own WHERE clause (re-evaluated by
-- PostgreSQL on the newest row version) keep it from being claimed twice.
CREATE OR REPLACE FUNCTION gw_claim_notifications(p_owner text, p_lease_ms int, p_limit int,
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
           AND n.status = 'PENDING' AND n.next_at <= now()
           AND (n.lease_until IS NULL OR n.lease_until < now())
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
