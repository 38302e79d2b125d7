-- 0010: two indexes of 0001 that no query uses (the follow-up tasks claim
-- through orders_due_idx / refunds_due_idx of 0002).  Every order
-- transition changes status and updated_at, so orders_open_idx cost a new
-- index entry on each one (docs/performance.md, "writes per transition").
DROP INDEX IF EXISTS orders_open_idx;
DROP INDEX IF EXISTS refunds_open_idx;
