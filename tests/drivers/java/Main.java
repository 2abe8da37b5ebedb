// pgjdbc through pgtenant: CRUD, rollback, a server-prepared statement (prepareThreshold=1)
// reused across transactions, errors, COPY (CopyManager), Statement.cancel(), isolation;
// setReadOnly and SET TRANSACTION ISOLATION LEVEL with the tenant context checked inside;
// setTransactionIsolation (a session setting, which follows the client through pgtenant).
// Run: java -cp /usr/share/java/postgresql.jar Main.java  (env: see tests/drivers.rs)
import java.io.StringReader;
import java.io.StringWriter;
import java.sql.*;
import java.util.*;
import org.postgresql.PGConnection;
import org.postgresql.copy.CopyManager;

public class Main {
    static final String MODE = System.getenv().getOrDefault("PGT_MODE", "proxy");
    static final boolean DIRECT = MODE.equals("direct");
    static final String STAGE = "CREATE TEMP TABLE invoices_in (tenant_id uuid, amount_cents bigint) ON COMMIT DROP";
    static final String UNSTAGE = "INSERT INTO invoices (tenant_id, amount_cents) SELECT tenant_id, amount_cents FROM invoices_in";
    static final List<String> failed = new ArrayList<>();
    static int passed = 0;

    interface Body { void run() throws Exception; }

    static boolean check(String name, boolean ok, Object detail) {
        System.out.println((ok ? "ok   " : "FAIL ") + "pgjdbc [" + MODE + "] " + name + (ok ? "" : " -- " + detail));
        if (ok) passed++; else failed.add(name);
        return ok;
    }
    static void eq(String name, Object got, Object want) { check(name, Objects.equals(got, want), "got " + got + ", want " + want); }
    static void step(String name, Body b) {
        try { b.run(); } catch (Exception e) { e.printStackTrace(); check(name, false, e); }
    }
    static void expectError(String name, String state, Body b) {
        try { b.run(); check(name, false, "no error"); }
        catch (SQLException e) { eq(name, e.getSQLState(), state); }
        catch (Exception e) { check(name, false, e); }
    }
    static String env(String k) { return System.getenv(k); }
    static final String SETTINGS = "SELECT current_setting('transaction_isolation') || '/' || current_setting('transaction_read_only') || '/' || current_setting('app.current_tenant')";

    public static void main(String[] args) throws Exception {
        for (String x : new String[] {"A", "B"}) runTenant(x, x.equals("A") ? "B" : "A");
        System.out.println("pgjdbc [" + MODE + "]: " + passed + " passed, " + failed.size() + " failed");
        if (!failed.isEmpty()) System.out.println("failed: " + String.join("; ", failed));
        System.exit(failed.isEmpty() ? 0 : 1);
    }

    static Connection c;
    static String id;
    static List<String> seen = new ArrayList<>();

    static Object one(String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int i = 0; i < params.length; i++) ps.setObject(i + 1, params[i]);
            try (ResultSet rs = ps.executeQuery()) { return rs.next() ? rs.getObject(1) : null; }
        }
    }
    static int update(String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int i = 0; i < params.length; i++) ps.setObject(i + 1, params[i]);
            return ps.executeUpdate();
        }
    }
    /** Starts a transaction (autocommit is off): in direct mode sets the context first. */
    static void begin() throws SQLException {
        if (DIRECT) one("SELECT set_config('app.current_tenant', ?, true)", id);
    }
    static void commit() throws SQLException {
        seen.add((String) one("SELECT current_setting('app.current_tenant')"));
        c.commit();
    }

    static void runTenant(String x, String o) throws Exception {
        String p = x + ":";
        id = env("PGT_TENANT_" + x);
        UUID uid = UUID.fromString(id), other = UUID.fromString(env("PGT_TENANT_" + o));
        seen.clear();
        String url = "jdbc:postgresql://" + env("PGT_HOST") + ":" + env("PGT_PORT") + "/" + env("PGT_DB") + "?prepareThreshold=1&connectTimeout=10";
        try {
            c = DriverManager.getConnection(url, env("PGT_USER_" + x), env("PGT_PASSWORD_" + x));
            c.setAutoCommit(false);
            check(p + " connect", true, null);
        } catch (SQLException e) { check(p + " connect", false, e); return; }

        step(p + " isolation", () -> {
            begin();
            eq(p + " isolation: only own tenant_id visible", one("SELECT string_agg(DISTINCT tenant_id::text, ',') FROM invoices"), id);
            commit();
        });
        step(p + " crud", () -> {
            begin(); long rid = (Long) one("INSERT INTO invoices (tenant_id, amount_cents) VALUES (?, ?) RETURNING id", uid, 4242L); commit();
            begin(); eq(p + " crud: read back", one("SELECT amount_cents || '/' || status FROM invoices WHERE id = ?", rid), "4242/open"); commit();
            begin(); eq(p + " crud: update rowcount", update("UPDATE invoices SET status = 'paid', amount_cents = 4343 WHERE id = ?", rid), 1); commit();
            begin(); eq(p + " crud: read updated", one("SELECT amount_cents || '/' || status FROM invoices WHERE id = ?", rid), "4343/paid"); commit();
            begin(); eq(p + " crud: delete rowcount", update("DELETE FROM invoices WHERE id = ?", rid), 1); commit();
            begin(); eq(p + " crud: row gone", one("SELECT count(*) FROM invoices WHERE id = ?", rid), 0L); commit();
        });
        step(p + " rls", () -> {
            begin();
            expectError(p + " rls refuses a foreign tenant_id", "42501", () -> update("INSERT INTO invoices (tenant_id, amount_cents) VALUES (?, 1)", other));
            c.rollback();
        });
        step(p + " rollback", () -> {
            begin(); long rid = (Long) one("INSERT INTO invoices (tenant_id, amount_cents) VALUES (?, 99) RETURNING id", uid); c.rollback();
            begin(); eq(p + " rollback: row gone", one("SELECT count(*) FROM invoices WHERE id = ?", rid), 0L); commit();
        });
        step(p + " prepared", () -> {
            Set<String> results = new HashSet<>();
            try (PreparedStatement ps = c.prepareStatement("SELECT current_setting('app.current_tenant') || '/' || count(*) FROM invoices WHERE amount_cents >= ?")) {
                for (int i = 0; i < 25; i++) {
                    begin();
                    ps.setLong(1, 0);
                    try (ResultSet rs = ps.executeQuery()) { rs.next(); results.add(rs.getString(1)); }
                    commit();
                }
            }
            check(p + " prepared statement reused in 25 transactions", results.size() == 1 && results.iterator().next().startsWith(id + "/"), results);
        });
        step(p + " error in transaction", () -> {
            begin();
            expectError(p + " error: division by zero raised", "22012", () -> one("SELECT 1 / 0"));
            expectError(p + " error: transaction aborted", "25P02", () -> one("SELECT 1"));
            c.rollback();
            begin(); eq(p + " error: next transaction works", one("SELECT 41 + 1"), 42); commit();
        });
        step(p + " copy", () -> {
            CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
            begin();
            expectError(p + " copy: FROM STDIN into an RLS table refused", "0A000",
                () -> cm.copyIn("COPY invoices (tenant_id, amount_cents) FROM STDIN", new StringReader(id + "\t1\n")));
            c.rollback();
            begin();
            try (Statement s = c.createStatement()) { s.execute(STAGE); }
            long n = cm.copyIn("COPY invoices_in (tenant_id, amount_cents) FROM STDIN", new StringReader(id + "\t7001\n" + id + "\t7002\n" + id + "\t7003\n"));
            eq(p + " copy: FROM STDIN row count", n, 3L);
            update(UNSTAGE);
            commit();
            begin();
            StringWriter w = new StringWriter();
            cm.copyOut("COPY (SELECT tenant_id, amount_cents FROM invoices WHERE amount_cents IN (7001, 7002, 7003) ORDER BY 2) TO STDOUT", w);
            commit();
            eq(p + " copy: rows read back with COPY TO STDOUT", w.toString(), id + "\t7001\n" + id + "\t7002\n" + id + "\t7003\n");
            begin(); eq(p + " copy: cleanup", update("DELETE FROM invoices WHERE amount_cents IN (7001, 7002, 7003)"), 3); commit();
        });
        step(p + " cancel", () -> {
            begin();
            long start = System.nanoTime();
            try (Statement s = c.createStatement()) {
                Thread t = new Thread(() -> {
                    try { Thread.sleep(500); s.cancel(); } catch (Exception e) { e.printStackTrace(); }
                });
                t.start();
                expectError(p + " cancel: pg_sleep(10) canceled", "57014", () -> s.execute("SELECT pg_sleep(10)"));
                t.join();
            }
            long ms = (System.nanoTime() - start) / 1_000_000;
            check(p + " cancel: within 5 s", ms < 5000, ms + " ms");
            c.rollback();
            begin(); eq(p + " cancel: connection usable afterwards", one("SELECT 1"), 1); commit();
        });
        step(p + " isolation levels", () -> {
            // BEGIN READ ONLY (setReadOnly, readOnlyMode=transaction) and SET TRANSACTION as the
            // transaction's first statement; the context must still be there inside.
            Object[][] cases = {{"SERIALIZABLE", "serializable", true}, {"REPEATABLE READ", "repeatable read", false}};
            for (Object[] k : cases) {
                c.setReadOnly((Boolean) k[2]);
                try (Statement s = c.createStatement()) { s.execute("SET TRANSACTION ISOLATION LEVEL " + k[0]); }
                begin();
                String got = (String) one(SETTINGS);
                commit();
                eq(p + " setReadOnly(" + k[2] + ") + SET TRANSACTION ISOLATION LEVEL " + k[0] + ": level, access mode and context",
                    got, k[1] + "/" + ((Boolean) k[2] ? "on" : "off") + "/" + id);
            }
            c.setReadOnly(true);
            begin();
            expectError(p + " read only: INSERT refused", "25006", () -> update("INSERT INTO invoices (tenant_id, amount_cents) VALUES (?, 8301)", uid));
            c.rollback();
            c.setReadOnly(false);
            // setTransactionIsolation sends SET SESSION CHARACTERISTICS AS TRANSACTION ...: a
            // session setting, which transaction pooling does not carry to the next transaction
            // yet (README, Compatibility; pinning, issue 16 item 2, will keep it).
            for (int level : new int[] {Connection.TRANSACTION_SERIALIZABLE, Connection.TRANSACTION_REPEATABLE_READ}) {
                c.setTransactionIsolation(level);
                begin();
                String got = (String) one(SETTINGS);
                commit();
                String want = (level == Connection.TRANSACTION_SERIALIZABLE ? "serializable" : "repeatable read") + "/off/" + id;
                check(p + " setTransactionIsolation(" + want.split("/")[0] + "): level and context", Objects.equals(got, want), "got " + got + ", want " + want);
            }
            c.setTransactionIsolation(Connection.TRANSACTION_READ_COMMITTED);
        });
        step(p + " final isolation", () -> {
            begin();
            eq(p + " final isolation: only own tenant_id visible", one("SELECT string_agg(DISTINCT tenant_id::text, ',') FROM invoices"), id);
            commit();
        });
        check(p + " app.current_tenant = own id in all " + seen.size() + " transactions", !seen.isEmpty() && new HashSet<>(seen).equals(Set.of(id)), new HashSet<>(seen));
        c.close();
    }
}
