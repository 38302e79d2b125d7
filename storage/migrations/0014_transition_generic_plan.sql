-- 0014: the first-transition batch (0011) is planned once per session, not
-- once per call.  0011 made a custom plan for every call (plan_cache_mode
-- force_custom_plan) so that the UPDATE of the listed ids was planned with
-- the table's real size; perf on the PostgreSQL backends during the c-to-b
-- bench then showed that planning (parse analysis of the four CTEs, the
-- planner, its allocations and page faults) was a quarter of this
-- function's time and a tenth of all PostgreSQL's — the largest single item
-- (docs/performance.md, "Third round").
--
-- The plan wanted is always the same: the primary key's index scan of the
-- listed ids.  A generic plan with sequential and bitmap scans disabled is
-- that plan whatever the table's size when it is made (an empty table at
-- start-up, which is what made the cached plan a sequential scan before),
-- and the status test stays off orders_due_idx ("|| ''", 0011), so no other
-- index can be ANDed in.  The function's other statements scan no table.
ALTER FUNCTION gw_order_transition_first_many(jsonb) RESET plan_cache_mode;
ALTER FUNCTION gw_order_transition_first_many(jsonb) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION gw_order_transition_first_many(jsonb) SET enable_seqscan = off;
ALTER FUNCTION gw_order_transition_first_many(jsonb) SET enable_bitmapscan = off;
