-- 0013: the foreign keys from orders to merchants, shops and sub_merchants
-- are replaced by a rule on the parent tables: their rows are never deleted
-- and never change id (a merchant, shop or sub-merchant is deactivated, not
-- removed — the admin API has no delete).  Each order insert checked all
-- three keys with a row lock (FOR KEY SHARE) on the same few hot parent
-- rows: about a third of the cost of creating an order, and a MultiXact
-- per concurrent locker (docs/performance.md).  The guarantee the keys gave
-- — an order never names a missing merchant, shop or sub-merchant — holds
-- as before: a parent that could go missing can no longer go.
ALTER TABLE orders DROP CONSTRAINT orders_merchant_id_fkey,
                   DROP CONSTRAINT orders_shop_id_fkey,
                   DROP CONSTRAINT orders_sub_merchant_id_fkey;

CREATE FUNCTION gw_parent_keep() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never deleted and keep their id (orders name them); deactivate instead',
        TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER merchants_keep BEFORE DELETE OR UPDATE OF id OR TRUNCATE ON merchants
    FOR EACH STATEMENT EXECUTE FUNCTION gw_parent_keep();
CREATE TRIGGER shops_keep BEFORE DELETE OR UPDATE OF id OR TRUNCATE ON shops
    FOR EACH STATEMENT EXECUTE FUNCTION gw_parent_keep();
CREATE TRIGGER sub_merchants_keep BEFORE DELETE OR UPDATE OF id OR TRUNCATE ON sub_merchants
    FOR EACH STATEMENT EXECUTE FUNCTION gw_parent_keep();
