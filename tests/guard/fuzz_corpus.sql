# Seeds of the guard's differential fuzz (src/policy/fuzz.rs): one SQL text per line, a
# newline written as \n. Taken from the guard, verified and isolation tests, plus pgbench.
UPDATE pgbench_accounts SET abalance = abalance + -4711 WHERE aid = 31;
SELECT abalance FROM pgbench_accounts WHERE aid = 31;
UPDATE pgbench_tellers SET tbalance = tbalance + -4711 WHERE tid = 3;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 31, -4711, CURRENT_TIMESTAMP);
BEGIN;
END;
SELECT current_setting('app.current_tenant')
SELECT current_setting('app.current_tenant'), tenant_id::text FROM invoices
RESET app.current_tenant
SET app.tenant_plan = 'x'
SET ROLE postgres
SET SESSION AUTHORIZATION postgres
select 1; set app.current_tenant = 'x'
DO $$ BEGIN PERFORM set_config('app.current_tenant', 'x', false); END $$
ALTER ROLE app_user SET app.current_tenant = 'x'
SELECT pg_catalog.set_config('app.current_tenant', $1, true)
SELECT set_config($1, $2, false)
prepare
prepare of a set_config
SELECT count(*) FROM pg_db_role_setting
BEGIN
ROLLBACK
begin
rollback
COMMIT
SELECT current_user::text, session_user::text
SET search_path = public
SELECT set_config('search_path', 'public', false)
SHOW app.current_tenant
UPDATE invoices SET status = 'paid' WHERE false
SELECT 'app.current_tenant'
SELECT current_setting('app.tenant_plan')
SELECT name FROM pg_settings WHERE name = 'app.current_tenant'
RESET ALL
SELECT current_setting('app.current_tenant', true)
BEGIN / RESET ALL / SELECT as separate simple queries
BEGIN; RESET ALL; SELECT current_setting('app.current_tenant', true); COMMIT
SELECT tenant_id::text FROM invoices
SELECT 1::int4
DISCARD ALL
PREPARE p AS SELECT 1
EXECUTE p
DEALLOCATE p
select 1; prepare q as select 2
PREPARE
DEALLOCATE ALL
DEALLOCATE PREPARE ALL
SELECT 1
Close pgtenant_ctx
SELECT current_setting('app.current_tenant'), $1::text
CREATE FUNCTION pg_temp.f(q text) RETURNS void LANGUAGE plperl AS 'spi_exec_query($_[0])'
SELECT 'pg_catalog.set_config(text,text,boolean)'::regprocedure::oid
SET standard_conforming_strings = off; BEGIN
SET standard_conforming_strings = off
SET SESSION standard_conforming_strings TO false
SELECT set_config('standard_conforming_strings', 'off', false)
SELECT set_config('standard_conforming_strings', 'o' || 'ff', false)
SET NAMES 'SJIS'
SET client_encoding TO 'BIG5'
SET client_encoding = gbk
SELECT set_config('client_encoding', 'Shift_JIS', false)
ALTER ROLE app_user SET client_encoding = 'SJIS'
SET client_encoding TO 'UTF8'
SET NAMES 'UTF8'
SET standard_conforming_strings = on
SELECT 'row:' || tenant_id FROM public.invoices
set
set local
set to
set quoted
set comments
set case
set line comment
set session
do block perform
do block execute
do block reads rows
alter role current_user
alter role in database
alter role stamp default
ALTER ROLE CURRENT_USER SET pgtenant.stamp = '1:0000000000000000000000000000000000000000000000000000000000000000'; SELECT 'row:' || tenant_id FROM invoices
alter database
copy out
copy with set_config inside
copy own stamp after switching
SELECT 'row:' || encode(ipad, 'hex') FROM pgtenant.keys
call the private hmac
SELECT 'row:' || encode(pgtenant._hmac(1, 'x'), 'hex')
call the private verifier
SELECT pgtenant._encode(ARRAY['x'])
set role
SET ROLE postgres; SELECT 'row:' || tenant_id FROM invoices
SET SESSION AUTHORIZATION postgres; SELECT 'row:' || tenant_id FROM invoices
reset the context
RESET app.current_tenant; SELECT 'row:' || tenant_id FROM invoices
reset all
RESET ALL; SELECT 'row:' || tenant_id FROM invoices
BEGIN; SELECT set_config('app.current_tenant', '', true), set_config('app.tenant_plan', '', true), set_config('pgtenant.stamp', '', true); SELECT 'row:' || tenant_id FROM invoices; COMMIT
insert for another tenant
insert after set
update another tenant
delete after set_config
SELECT set_config('app.current_tenant', $1, false)
SELECT 'row:' || tenant_id FROM invoices
SELECT set_config($1, $2, true)
SELECT pgtenant.enter($1::int, $2, true, $3, $4)
select 1; execute p(1)
deallocate prepare all
PREPARE TRANSACTION 'x'
SELECT 'prepare'
SELECT "a""b", E'x\'y', U&'d', $q$ $$ $q$, $1, 1.5e3, x'0f' -- c\n/* a /* b */ c */ ;
SELECT
select 'abc
SET AA\n'
SET app.current_tenant = 'x'
set APP.Current_Tenant to 'x'
SET SESSION app.current_tenant = 1
SET LOCAL app.current_tenant TO DEFAULT
SET /* x */ app.current_tenant = 1
set\napp.current_tenant to 'x'
SET "app".current_tenant = 1
SET app."current_tenant" = 1
SET "app.current_tenant" = 1
SELECT 1; SET app.current_tenant='x'
ALTER ROLE bob SET app.current_tenant = '5'
ALTER ROLE bob IN DATABASE d RESET app.current_tenant
ALTER DATABASE d SET app.current_tenant TO '5'
ALTER SYSTEM SET app.current_tenant = '5'
CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql SET app.current_tenant = '1' AS $$ select 1 $$
CREATE PROCEDURE p(a int DEFAULT CASE WHEN true THEN 1 ELSE 2 END) SET app.current_tenant FROM CURRENT AS 'x'
reset "app"."current_tenant"
SET ROLE admin
set local role none
SET role = 'x'
RESET ROLE
SET SESSION AUTHORIZATION bob
SET session_authorization = 'bob'
RESET SESSION AUTHORIZATION
SELECT set_config('app.current_tenant','x',false)
SELECT set_config('APP.CURRENT_TENANT'::text, 'x', false)
SELECT pg_catalog.set_config(E'\x61pp.current_tenant', 'x', false)
SELECT "set_config"($$app.current_tenant$$, 'x', false)
SELECT set_config('app.'\n'current_tenant', 'x', false)
select pg_catalog.set_config($1,$2,true)
select set_config('app.' || 'current_tenant', 'x', false)
select set_config(lower('APP.CURRENT_TENANT'), 'x', false)
select set_config(setting_name => 'x', new_value => 'y', is_local => false)
DO $$ BEGIN SET app.current_tenant = 'x'; END $$
DO $$BEGIN PERFORM set_config('app.current_tenant', '1', false); END$$
DO $a$ BEGIN EXECUTE $b$ SET app.current_tenant = 1 $b$; END $a$
DO $$ BEGIN IF x THEN RESET ROLE; END IF; END $$
DO $$ BEGIN EXECUTE 'SET app.current_tenant = ''x'''; END $$
DO $$ BEGIN EXECUTE E'\x53ET app.current_tenant = 1'; END $$
DO $$ BEGIN EXECUTE 'select set_config(''app.current_tenant'', ''1'', false)'; END $$
DO $$ BEGIN EXECUTE format('SET %I = %L', 'app.current_tenant', '1'); END $$
CREATE FUNCTION f() RETURNS void AS 'SET app.current_tenant = 1' LANGUAGE sql
SELECT 'SET app.current_tenant = 1'
set 
SELECT 'x'; -- SET app.current_tenant = 1\nSELECT 1
SELECT 1 /* SET app.current_tenant = 1 */
SELECT current_tenant, 'app.current_tenant' FROM t
UPDATE t SET col = 1
UPDATE t SET role = 1, current_tenant = 2
UPDATE begin SET role = 1
INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET role = excluded.role
DO $$ BEGIN UPDATE t SET role = 1; END $$
SET app.current_tenant_other = 1
select set_config('search_path','x',false)
ALTER TABLE t ALTER COLUMN role SET DEFAULT 'x'
ALTER TABLE t SET (fillfactor = 50)
CREATE FUNCTION f() RETURNS int BEGIN ATOMIC UPDATE t SET role = 1; END
SELECT set_config
UPDATE pg_catalog.pg_settings SET setting = 'x' WHERE name = 'app.current_tenant'
update only pg_settings set setting = 'x'
SELECT * FROM pg_settings WHERE name = 'app.current_tenant'
SELECT 'unterminated SET app.current_tenant = 1
SET TIME ZONE 'UTC'
SET app.current_tenant = 1
VACUUM
vacuum analyze t;
CREATE DATABASE d
DROP DATABASE IF EXISTS d
CREATE TABLESPACE s LOCATION '/x'
DROP TABLESPACE s
ALTER DATABASE d SET TABLESPACE s
ALTER SYSTEM SET work_mem = '1MB'
CREATE INDEX CONCURRENTLY i ON t (a)
create unique index concurrently i on t(a)
DROP INDEX CONCURRENTLY i
CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p
DROP SUBSCRIPTION s
ALTER SUBSCRIPTION s REFRESH PUBLICATION
COMMIT PREPARED 'x'
ROLLBACK PREPARED 'x'
ALTER TABLE p DETACH PARTITION c CONCURRENTLY
VACUUM; SELECT 1
SELECT 1; VACUUM
CREATE INDEX i ON t (a)
ALTER DATABASE d SET work_mem = 1
DISCARD PLANS
SELECT 'VACUUM'
DROP TABLE t
SET search_path = x
SET SESSION x = 1
select 1; RESET ALL
LISTEN c
DECLARE c CURSOR WITH HOLD FOR SELECT 1
LOAD 'auto_explain'
CREATE TEMP TABLE t (a int)
CREATE GLOBAL TEMPORARY TABLE t (a int)
SELECT * INTO TEMP t FROM x
SELECT * INTO LOCAL TEMPORARY t FROM x
SELECT set_config('a.b', 'c', false)
SELECT pg_advisory_lock(1)
SELECT PG_TRY_ADVISORY_LOCK_SHARED(1)
SELECT dblink_connect('x')
DO $$ BEGIN PERFORM 1; END $$
UPDATE pg_settings SET setting = 1 WHERE name = 'x'
UPDATE t SET x=1
INSERT INTO t VALUES (1)
SET LOCAL x = 1
SET TRANSACTION ISOLATION LEVEL SERIALIZABLE
SET CONSTRAINTS ALL DEFERRED
LOCK TABLE t
SELECT pg_advisory_xact_lock(1)
SELECT 'SET x = 1'
SELECT * INTO t FROM x
CREATE TABLE t (a int)
SET 
VACUUM invoices
CREATE TEMP TABLE t (x int)
DO $$BEGIN PERFORM set_config('app.current_tenant', 'x', false); END$$
SELECT 1; DISCARD ALL
select set_config('role', 'x', true)
begin;
 Begin Work ; 
BEGIN TRANSACTION;;
start transaction
BEGIN ISOLATION LEVEL SERIALIZABLE
BEGIN READ ONLY
START TRANSACTION READ WRITE
BEGIN; SELECT 1
BEGIN; BEGIN
START
begin work work
SELECT 'BEGIN'
DO $$BEGIN END$$
select Set_Config(
UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2
SELECT abalance FROM pgbench_accounts WHERE aid = 7; SELECT 1
SET LOCAL work_mem = '8MB'
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ
VACUUM t
SELECT table_to_xml('invoices', true, false, '')
SELECT query_to_xml('SELECT 1', true, false, '')
CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'
CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = x AS $$ SELECT 1 $$
CREATE FUNCTION f(a int) RETURNS int LANGUAGE plpgsql AS $$ DECLARE x int; BEGIN x := a + 1; IF x > 2 THEN RETURN x; END IF; EXECUTE 'SELECT 1'; RETURN 0; END $$
CREATE FUNCTION f() RETURNS int RETURN 1
DO $$ BEGIN PERFORM 1; SET search_path = x; END $$
DO $$ BEGIN SET LOCAL work_mem = '1MB'; END $$
SELECT c.oid::pg_catalog.regclass FROM pg_catalog.pg_class c
SELECT 'set_config'
COPY t FROM STDIN
EXPLAIN ANALYZE SELECT 1
SELECT pg_catalog.set_config('app.current_tenant', 'b', true)
SELECT "set_config"('App.Current_Tenant', 'b', true)
SELECT U&"set\005fconfig"('app.current_tenant', 'b', true)
SELECT set_config(x, 'b', true) FROM t
SET "app.current_tenant" = 'b'
SET ROLE other
SET SESSION AUTHORIZATION other
CREATE FUNCTION f() RETURNS int LANGUAGE sql SET app.current_tenant = 'b' AS 'SELECT 1'
DO $$ BEGIN PERFORM set_config('app.current_tenant', 'b', true); END $$
DO $$ DECLARE x text; BEGIN x := set_config('app.current_tenant', 'b', true); END $$
DO $$ BEGIN IF set_config('app.current_tenant', 'b', true) IS NULL THEN RETURN; END IF; END $$
DO $$ BEGIN EXECUTE 'SELECT set_config(''app.current_tenant'', ''b'', true)'; END $$
DO $$ BEGIN EXECUTE 'SE' || 'T app.current_tenant = 1'; END $$
DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$
DO $$ BEGIN DISCARD ALL; END $$
CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'SET search_path = x'
CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'DEALLOCATE ALL'
CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN SET work_mem = '1MB'; END $$
CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_advisory_lock(1); END $$
CREATE FUNCTION f() RETURNS void LANGUAGE plperl AS $$ 1 $$
ALTER ROLE CURRENT_USER PASSWORD 'x'
ALTER USER SESSION_USER SET work_mem = '1MB'
ALTER ROLE app SET search_path = x
ALTER DATABASE app SET work_mem = '1MB'
ALTER DATABASE app CONNECTION LIMIT 1
UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'
UPDATE pg_catalog."pg_settings" SET setting = 'b' WHERE name = 'app.current_tenant'
WITH x AS (UPDATE pg_settings SET setting = 'b' RETURNING 1) SELECT 1
SET standard_conforming_strings TO 0
SET "standard_conforming_strings" = 'off'
SELECT set_config('client_encoding', 'BIG5', false)
SELECT query FROM pg_stat_activity
SELECT pg_terminate_backend(42)
SELECT table_to_xml(12345, true, false, '')
SELECT table_to_xml(12345::oid::regclass, true, false, '')
SELECT table_to_xml('pg_catalog.pg_stat_activity', true, false, '')
SELECT 'pg_stat_activity'::regclass
SELECT query_to_xml('SELECT query FROM pg_stat_activity', true, false, '')
SELECT query_to_xml(q, true, false, '') FROM t
SELECT 'set_config'::regproc
CREATE AGGREGATE a(text, boolean) (SFUNC = pg_catalog.set_config, STYPE = text)
SELECT * FROM dblink('dbname=x', 'SELECT 1') AS t(a int)
SELECT pg_read_file('/etc/passwd')
SELECT lo_import('/etc/passwd')
LOAD 'x'
ALTER ROLE app SET app.current_tenant = 'b'
SELECT * FROM ts_stat('SELECT v FROM docs')::text
SELECT query_to_xml('SELECT set_' || 'config(...)', true, false, '')
SELECT pg_catalog."query_to_xml"(q, true, false, '') FROM t
SELECT QUERY_TO_XML_AND_XMLSCHEMA($1, true, false, '')
SELECT * FROM ts_stat(format('SELECT %s', 1))
SELECT ts_rewrite('a'::tsquery, 'SELECT ' || 'x')
SELECT * FROM crosstab('SELECT 1', $1) AS t(a int)
CREATE FUNCTION pg_temp.run(q text) RETURNS xml LANGUAGE sql AS 'SELECT query_to_xml(q, true, false, '''')'
CREATE AGGREGATE pg_temp.ctx(text, boolean) (SFUNC = pg_catalog.set_config, STYPE = text)
CREATE AGGREGATE pg_temp.run(text) (SFUNC = "ts_rewrite", STYPE = tsquery)
CREATE OPERATOR pg_temp.### (LEFTARG = tsquery, RIGHTARG = text, FUNCTION = ts_rewrite)
SELECT * FROM pg_catalog."pg_prepared_statements"
SELECT pg_stat_get_backend_activity(s) FROM generate_series(1, 9) s
SELECT table_to_xml('pg_stat_activity', true, false, '')
SELECT schema_to_xml('pg_catalog', true, false, '')
SELECT pg_terminate_backend(pid) FROM t
SELECT pg_catalog.pg_cancel_backend(42)
SELECT table_to_xml(('pg_stat_' || 'activity')::regclass, true, false, '')
SELECT ts_rewrite(q, to_tsquery('a'), to_tsquery('b')) FROM t
SELECT * FROM crosstab('SELECT 1', 3) AS t(a int)
SET LOCAL client_encoding TO big5
set session standard_conforming_strings = off
ALTER ROLE app SET standard_conforming_strings TO 'false'
SELECT set_config('client_encoding', 'GBK', false)
SELECT set_config('Standard_Conforming_Strings', x, false) FROM t
DO $$ BEGIN SET standard_conforming_strings = off; END $$
set client_encoding to 'UTF8'
SELECT set_config('client_encoding', 'UTF8', false)
RESET client_encoding
SELECT current_setting('app.current_tenant'), current_setting('app.tenant_plan')
SELECT current_setting('app.current_tenant'), $1::int4
commit
SELECT 1/0
SELECT current_setting('app.current_tenant'); SELECT current_setting('app.current_tenant')
BEGIN before drop
SELECT pg_sleep(0.02), current_setting('app.current_tenant')
prepare after reconnect
load finished within 60 s
VACUUM (simple protocol) works through the proxy
SELECT current_setting('app.tenant_plan', true)
CREATE INDEX CONCURRENTLY IF NOT EXISTS inv_amount ON invoices (amount_cents)
SELECT current_setting('search_path')
SHOW TimeZone
SET search_path = pg_catalog, public
SET statement_timeout = '123s'
SHOW statement_timeout
VACUUM (extended protocol) works directly against PostgreSQL
