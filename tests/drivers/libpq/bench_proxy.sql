\set amount random(1, 100000)
BEGIN;
SELECT count(*) FROM invoices WHERE amount_cents >= :amount;
SELECT current_setting('app.current_tenant');
UPDATE invoices SET status = status WHERE amount_cents = :amount;
END;
