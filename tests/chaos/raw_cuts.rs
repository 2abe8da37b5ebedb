//! Raw-protocol clients vanishing at precise protocol points: after Parse, after Bind, after
//! Execute without Sync, inside COPY, in the middle of a message or of a TLS record, inside
//! a transaction.

use bytes::BytesMut;
use pgtenant::protocol::messages;
use tokio::io::AsyncWriteExt;

use super::common::raw::{self, RawConn, RawStream};
use super::ledger::Outcome;
use super::raw_client::{ext, insert_sql, send};
use super::tx::Tx;
use super::workload::RawShape;

/// Sends a partial conversation and vanishes; every write sent must stay uncommitted.
pub(crate) async fn cut(c: &mut RawConn, mut tx: Tx<'_>, shape: RawShape) -> bool {
    let mut out = BytesMut::new();
    match shape {
        RawShape::CutAfterParse => {
            let sql = insert_sql(&mut tx);
            messages::parse(&mut out, "", &sql);
            tx.step("  Parse, vanish");
        }
        RawShape::CutAfterBind => {
            let sql = insert_sql(&mut tx);
            messages::parse(&mut out, "", &sql);
            messages::bind(&mut out, "", std::iter::empty());
            tx.step("  Parse Bind, vanish");
        }
        RawShape::CutAfterExecute => {
            let sql = insert_sql(&mut tx);
            ext(&mut out, &sql);
            if tx.rng.chance(50) {
                raw::flush(&mut out);
                tx.step("  Parse Bind Execute Flush, read, vanish");
                if !send(c, &out).await {
                    tx.finish();
                    return false;
                }
                out.clear();
                for _ in 0..4 {
                    if c.recv().await.is_none_or(|m| m.0 == b'C' || m.0 == b'E') {
                        break;
                    }
                }
            } else {
                tx.step("  Parse Bind Execute, vanish");
            }
        }
        RawShape::CutInCopy => {
            // COPY FROM cannot write an RLS table: clients stage through a temp table.
            let ins = insert_sql(&mut tx);
            let (j, id) = tx.write();
            let t = format!("tt_{}_{}", tx.client, tx.k);
            tx.step(format!(
                "  BEGIN; INSERT; COPY {t} FROM STDIN write {j} ({id}), vanish inside"
            ));
            messages::query(
                &mut out,
                &format!(
                    "BEGIN; {ins}; CREATE TEMP TABLE {t} (tenant_id uuid, amount_cents int8, status text) \
                     ON COMMIT DROP; COPY {t} FROM STDIN"
                ),
            );
            if !send(c, &out).await {
                tx.finish();
                return false;
            }
            out.clear();
            loop {
                match c.recv().await {
                    Some((b'G', _)) => break,
                    Some((b'E' | b'Z', _)) | None => {
                        tx.finish();
                        return false;
                    }
                    Some(_) => {}
                }
            }
            let line = format!("{}\t{id}\t{}\n", tx.tenant_id, tx.marker('w'));
            messages::write_msg(&mut out, b'd', |b| b.extend_from_slice(line.as_bytes()));
        }
        RawShape::CutMidMessage => {
            let sql = insert_sql(&mut tx);
            ext(&mut out, &sql);
            raw::sync(&mut out);
            let at = 1 + tx.rng.below(out.len() as u64 - 6) as usize;
            tx.step(format!(
                "  P/B/E/S, vanish after {at} of {} bytes",
                out.len()
            ));
            out.truncate(at);
        }
        RawShape::CutMidRecord => {
            let sql = insert_sql(&mut tx);
            messages::query(&mut out, &format!("BEGIN; {sql}"));
            if !send(c, &out).await {
                tx.finish();
                return false;
            }
            out.clear();
            let _ = c.until_ready().await;
            messages::query(&mut out, "COMMIT");
            let at = tx.rng.below(out.len() as u64) as usize;
            let inside = match c.stream {
                RawStream::Tls(_) => "its TLS record",
                RawStream::Plain(_) => "the message",
            };
            tx.step(format!(
                "  BEGIN; INSERT (simple), wait for ReadyForQuery; COMMIT, vanish inside {inside} (at {at})"
            ));
            tx.outcome = Outcome::Aborted;
            tx.finish();
            c.vanish_mid_record(&out, at).await;
            return false;
        }
        _ => {
            // CutInTransaction
            let sql = insert_sql(&mut tx);
            messages::query(&mut out, &format!("BEGIN; {sql}"));
            tx.step("  BEGIN; INSERT (simple), wait for ReadyForQuery, vanish");
            if !send(c, &out).await {
                tx.finish();
                return false;
            }
            out.clear();
            let _ = c.until_ready().await;
        }
    }
    let _ = send(c, &out).await;
    tx.outcome = Outcome::Aborted;
    tx.finish();
    let _ = c.stream.shutdown().await;
    false
}
