// node-postgres (pg) + pg-copy-streams through pgtenant: both tenants concurrently; CRUD,
// rollback, a named query ({name, text}) reused across transactions, errors, COPY, cancel (a
// CancelRequest carrying the client's BackendKeyData), isolation; pg-cursor reads and pg-query-stream
// (Flush without Sync between batches), BEGIN ISOLATION LEVEL. Env: see tests/drivers.rs.
'use strict';
const net = require('net');
const { Readable, Writable } = require('stream');
const { pipeline } = require('stream/promises');
const { Client } = require('pg');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');
const Cursor = require('pg-cursor');
const QueryStream = require('pg-query-stream');

const env = process.env;
const MODE = env.PGT_MODE || 'proxy';
const DIRECT = MODE === 'direct';
const TENANTS = ['A', 'B'].map((x) => ({
  label: x, user: env[`PGT_USER_${x}`], password: env[`PGT_PASSWORD_${x}`], id: env[`PGT_TENANT_${x}`],
}));
const COPY_AMOUNTS = [7001, 7002, 7003];
const STAGE = 'CREATE TEMP TABLE invoices_in (tenant_id uuid, amount_cents bigint) ON COMMIT DROP';
const UNSTAGE = 'INSERT INTO invoices (tenant_id, amount_cents) SELECT tenant_id, amount_cents FROM invoices_in';
const failed = [];
let passed = 0;

function check(name, ok, detail) {
  console.log(`${ok ? 'ok  ' : 'FAIL'} node-postgres [${MODE}] ${name}${ok ? '' : ' -- ' + JSON.stringify(detail)}`);
  if (ok) passed++; else failed.push(name);
  return ok;
}
const eq = (name, got, want) => check(name, JSON.stringify(got) === JSON.stringify(want), { got, want });

async function step(name, fn) {
  try { await fn(); } catch (e) { console.error(e); check(name, false, `${e.code || ''} ${e.message}`); }
}

async function expectError(name, code, fn) {
  try { await fn(); check(name, false, 'no error'); } catch (e) { eq(name, e.code, code); }
}

function cancelRequest(client) { // what libpq's PQcancel sends, with the key the server gave us
  return new Promise((resolve, reject) => {
    const s = net.connect(Number(env.PGT_PORT), env.PGT_HOST, () => {
      const b = Buffer.alloc(16);
      b.writeInt32BE(16, 0); b.writeInt32BE(80877102, 4);
      b.writeInt32BE(client.processID, 8); b.writeInt32BE(client.secretKey, 12);
      s.end(b);
    });
    s.on('error', reject); s.on('close', resolve);
  });
}

async function runTenant(t) {
  const p = `${t.label}:`;
  const other = TENANTS.find((o) => o.label !== t.label);
  const c = new Client({ host: env.PGT_HOST, port: Number(env.PGT_PORT), database: env.PGT_DB, user: t.user, password: t.password });
  try { await c.connect(); check(`${p} connect`, true); } catch (e) { check(`${p} connect`, false, e.message); return; }
  c.on('error', (e) => console.error('client error', e));
  const seen = [];
  const q = async (text, values) => c.query(text, values);
  const begin = async () => {
    await q('BEGIN');
    if (DIRECT) await q("SELECT set_config('app.current_tenant', $1, true)", [t.id]);
  };
  const tx = async (fn) => {
    await begin();
    try {
      const r = await fn();
      seen.push((await q("SELECT current_setting('app.current_tenant') AS t")).rows[0].t);
      await q('COMMIT');
      return r;
    } catch (e) { await q('ROLLBACK').catch(() => {}); throw e; }
  };

  await step(`${p} isolation`, async () => {
    const r = await tx(() => q('SELECT DISTINCT tenant_id::text AS t FROM invoices'));
    eq(`${p} isolation: only own tenant_id visible`, r.rows.map((x) => x.t), [t.id]);
  });

  await step(`${p} crud`, async () => {
    const id = await tx(async () => (await q('INSERT INTO invoices (tenant_id, amount_cents) VALUES ($1, $2) RETURNING id', [t.id, 4242])).rows[0].id);
    const read = (id) => tx(async () => (await q('SELECT amount_cents, status FROM invoices WHERE id = $1', [id])).rows);
    eq(`${p} crud: read back`, await read(id), [{ amount_cents: '4242', status: 'open' }]);
    eq(`${p} crud: update rowcount`, (await tx(() => q("UPDATE invoices SET status = 'paid', amount_cents = 4343 WHERE id = $1", [id]))).rowCount, 1);
    eq(`${p} crud: read updated`, await read(id), [{ amount_cents: '4343', status: 'paid' }]);
    eq(`${p} crud: delete rowcount`, (await tx(() => q('DELETE FROM invoices WHERE id = $1', [id]))).rowCount, 1);
    eq(`${p} crud: row gone`, await read(id), []);
  });

  await step(`${p} rls`, () => expectError(`${p} rls refuses a foreign tenant_id`, '42501',
    () => tx(() => q('INSERT INTO invoices (tenant_id, amount_cents) VALUES ($1, 1)', [other.id]))));

  await step(`${p} rollback`, async () => {
    await begin();
    const id = (await q('INSERT INTO invoices (tenant_id, amount_cents) VALUES ($1, 99) RETURNING id', [t.id])).rows[0].id;
    await q('ROLLBACK');
    eq(`${p} rollback: row gone`, (await tx(() => q('SELECT count(*)::int AS n FROM invoices WHERE id = $1', [id]))).rows[0].n, 0);
  });

  await step(`${p} prepared`, async () => {
    const named = { name: 'q1', text: "SELECT current_setting('app.current_tenant') AS t, count(*)::int AS n FROM invoices WHERE amount_cents >= $1" };
    const results = [];
    for (let i = 0; i < 25; i++) results.push((await tx(() => q({ ...named, values: [0] }))).rows[0]);
    const ok = results.every((r) => r.t === t.id && r.n === results[0].n && r.n > 0);
    check(`${p} named query q1 reused in 25 transactions`, ok, results.slice(0, 3));
  });

  await step(`${p} error in transaction`, async () => {
    await begin();
    await expectError(`${p} error: division by zero raised`, '22012', () => q('SELECT 1 / 0'));
    await expectError(`${p} error: transaction aborted`, '25P02', () => q('SELECT 1'));
    await q('ROLLBACK');
    eq(`${p} error: next transaction works`, (await tx(() => q('SELECT 41 + 1 AS v'))).rows[0].v, 42);
  });

  await step(`${p} copy`, async () => {
    await expectError(`${p} copy: FROM STDIN into an RLS table refused`, '0A000', () => tx(() =>
      pipeline(Readable.from([`${t.id}\t1\n`]), c.query(copyFrom('COPY invoices (tenant_id, amount_cents) FROM STDIN')))));
    await tx(async () => {
      await q(STAGE);
      const lines = COPY_AMOUNTS.map((a) => `${t.id}\t${a}\n`);
      await pipeline(Readable.from(lines), c.query(copyFrom('COPY invoices_in (tenant_id, amount_cents) FROM STDIN')));
      await q(UNSTAGE);
    });
    let out = '';
    const sink = new Writable({ write(chunk, _e, cb) { out += chunk; cb(); } });
    await tx(() => pipeline(c.query(copyTo(`COPY (SELECT tenant_id, amount_cents FROM invoices WHERE amount_cents IN (${COPY_AMOUNTS}) ORDER BY 2) TO STDOUT`)), sink));
    eq(`${p} copy: rows read back with COPY TO STDOUT`, out.trim().split('\n'), COPY_AMOUNTS.map((a) => `${t.id}\t${a}`));
    eq(`${p} copy: cleanup`, (await tx(() => q(`DELETE FROM invoices WHERE amount_cents IN (${COPY_AMOUNTS})`))).rowCount, 3);
  });

  await step(`${p} cancel`, async () => {
    const start = Date.now();
    const timer = new Promise((r) => setTimeout(r, 500)).then(() => cancelRequest(c));
    await expectError(`${p} cancel: pg_sleep(10) canceled`, '57014', () => tx(() => q('SELECT pg_sleep(10)')));
    await timer;
    check(`${p} cancel: within 5 s`, Date.now() - start < 5000, `${Date.now() - start} ms`);
    eq(`${p} cancel: connection usable afterwards`, (await tx(() => q('SELECT 1 AS v'))).rows[0].v, 1);
  });

  await step(`${p} cursor`, async () => {
    // pg-cursor: Execute with a row limit and Flush (no Sync) per read; the portal must stay
    // on the same backend between reads.
    const chunks = await tx(async () => {
      const cur = c.query(new Cursor("SELECT g, current_setting('app.current_tenant') AS t FROM generate_series(1, 100) g"));
      const out = [];
      for (let i = 0; i < 4; i++) {
        out.push(await cur.read(30));
        await new Promise((r) => setTimeout(r, 50));
      }
      await cur.close();
      return out;
    });
    eq(`${p} cursor: read(30) four times`, chunks.map((x) => x.length), [30, 30, 30, 10]);
    const rows = chunks.flat();
    check(`${p} cursor: rows in order, own context`,
      rows.every((r, i) => r.g === i + 1 && r.t === t.id), rows.slice(0, 3));
  });

  await step(`${p} query stream`, async () => {
    // pg-query-stream reads through a cursor in batches; outside a transaction block this is
    // one implicit transaction that ends only at the Sync after the last batch.
    const read = async () => {
      const rows = [];
      const stream = c.query(new QueryStream('SELECT g, txid_current() AS x FROM generate_series(1, 1000) g', [], { batchSize: 100 }));
      for await (const row of stream) rows.push(row);
      return rows;
    };
    const rows = await read();
    check(`${p} query stream: 1000 rows in order`, rows.length === 1000 && rows.every((r, i) => r.g === i + 1), rows.length);
    check(`${p} query stream: one transaction throughout`, new Set(rows.map((r) => r.x)).size === 1, [...new Set(rows.map((r) => r.x))]);
    const inTx = await tx(async () => {
      const out = [];
      const stream = c.query(new QueryStream("SELECT current_setting('app.current_tenant') AS t FROM generate_series(1, 300)", [], { batchSize: 50 }));
      for await (const row of stream) out.push(row.t);
      return out;
    });
    check(`${p} query stream: inside a transaction, own context`, inTx.length === 300 && inTx.every((x) => x === t.id), inTx.length);
  });

  await step(`${p} isolation levels`, async () => {
    for (const [sql, want] of [['BEGIN ISOLATION LEVEL SERIALIZABLE', ['serializable', 'off']],
      ['BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY', ['repeatable read', 'on']]]) {
      await q(sql);
      if (DIRECT) await q("SELECT set_config('app.current_tenant', $1, true)", [t.id]);
      const r = (await q("SELECT current_setting('transaction_isolation') AS i, current_setting('transaction_read_only') AS ro, current_setting('app.current_tenant') AS t")).rows[0];
      await q('COMMIT');
      eq(`${p} ${sql}: level, access mode and context`, [r.i, r.ro, r.t], [...want, t.id]);
    }
  });

  await step(`${p} session state across transactions`, async () => {
    // A temp table and LISTEN outlive their transaction (pgtenant pins the client).
    await q('CREATE TEMP TABLE scratch (n int)');
    for (const i of [1, 2, 3]) await tx(() => q('INSERT INTO scratch VALUES ($1)', [i]));
    const r = await tx(() => q('SELECT count(*)::int AS n FROM scratch'));
    eq(`${p} temp table across transactions`, r.rows[0].n, 3);
    const heard = new Promise((resolve) => {
      const timer = setTimeout(() => resolve(null), 5000);
      c.once('notification', (n) => { clearTimeout(timer); resolve([n.channel, n.payload]); });
    });
    await q('LISTEN driver_jobs');
    await tx(() => q('SELECT 1'));
    await q("NOTIFY driver_jobs, 'hello'");
    eq(`${p} LISTEN across transactions hears its NOTIFY`, await heard, ['driver_jobs', 'hello']);
    await q('UNLISTEN *');
    await q('DROP TABLE scratch');
  });

  await step(`${p} final isolation`, async () => {
    const r = await tx(() => q('SELECT DISTINCT tenant_id::text AS t FROM invoices'));
    eq(`${p} final isolation: only own tenant_id visible`, r.rows.map((x) => x.t), [t.id]);
  });
  check(`${p} app.current_tenant = own id in all ${seen.length} transactions`, seen.length > 0 && seen.every((s) => s === t.id), [...new Set(seen)]);
  await c.end();
}

(async () => {
  await Promise.all(TENANTS.map(runTenant)); // both tenants at once, sharing the pool
  console.log(`node-postgres [${MODE}]: ${passed} passed, ${failed.length} failed`);
  if (failed.length) console.log('failed: ' + failed.join('; '));
  process.exit(failed.length ? 1 : 0);
})().catch((e) => { console.error(e); process.exit(2); });
