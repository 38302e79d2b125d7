-- 0017: a c-to-b order's first transition (CREATED -> PENDING, the channel's
-- answer with the QR code) is a HOT update: no new entry in any of the
-- orders table's four indexes, only the new row version on the same page.
--
-- Before, that update changed two indexed columns: status (in the due
-- index's predicate) and next_check_at (its key, moved from the creation's
-- first check to pending_grace_s after the answer).  PostgreSQL then writes
-- a new entry in every index — the primary key, both unique indexes (each
-- with its uniqueness check) and the due index — for a row that has them
-- all already.  perf on the backends during the c-to-b bench showed index
-- insertion as the largest item after the executor (docs/performance.md).
--
--   * the due index's predicate names next_check_at only.  Every final
--     state clears next_check_at (gw_order_transition, the batch forms, the
--     notification paths), so the index holds the same open orders as
--     before; gw_claim_orders' "next_check_at <= now()" implies the new
--     predicate, so its plan is unchanged.
--   * paygated fixes a c-to-b order's first check when it creates it (the
--     later of tasks.created_grace_s and tasks.pending_grace_s after the
--     creation) and the first transition to PENDING keeps it.
--   * pages keep room for the updated version: fillfactor 70 (the new row
--     version must fit on the old one's page to be HOT).  It applies to
--     pages written from now on.
--
-- Measured with one backend (test/bench/sqlcost.sh): see
-- docs/performance.md, "Fifth round".
UPDATE orders SET next_check_at = NULL
 WHERE status IN ('SUCCESS', 'FAILED', 'CLOSED') AND next_check_at IS NOT NULL;
DROP INDEX orders_due_idx;
CREATE INDEX orders_due_idx ON orders (next_check_at) WHERE next_check_at IS NOT NULL;
ALTER TABLE orders SET (fillfactor = 70);
