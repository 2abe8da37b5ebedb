//! Refusing client requests (what is refused is decided in `crate::policy`). A refusal looks exactly like a PostgreSQL error: while a
//! backend is attached the backend itself raises it (so an open transaction fails as it
//! would in PostgreSQL); otherwise the proxy answers locally.

use super::flow::Owner;
use super::{End, Session};
use crate::protocol::codec::Frame;
use crate::protocol::{TxStatus, frontend_tag as ft, messages};

impl Session {
    /// Refuses `frame` with SQLSTATE `code` and `message`; `source` labels the metric.
    pub(super) async fn refuse(
        &mut self,
        frame: &Frame,
        code: &str,
        message: &str,
        source: &str,
    ) -> Result<(), End> {
        self.server
            .metrics
            .context_rejections
            .with_label_values(&[source])
            .inc();
        tracing::warn!(tenant = %self.tenant.name, "refused: {message}");
        let extended = !matches!(frame.tag, ft::QUERY | ft::FUNCTION_CALL);
        // A request answered locally did not send the deferred BEGIN; a refusal is raised by
        // the backend inside the transaction, which it aborts, as PostgreSQL would.
        if self.backend.is_none()
            && self.deferred_begin
            && !self.send_deferred_begin(frame, false).await?
        {
            return Ok(());
        }
        if self.backend.is_none() {
            self.client_error(code, message);
            if extended {
                self.skip_until_sync = frame.tag != ft::SYNC;
            } else {
                messages::ready_for_query(&mut self.cout, TxStatus::Idle);
            }
            return Ok(());
        }
        let raise = raise_sql(code, message);
        if extended {
            self.unnamed_on_backend = false;
            messages::parse(&mut self.bout, "", &raise);
            messages::bind(&mut self.bout, "", std::iter::empty());
            messages::execute(&mut self.bout);
            for tag in [ft::PARSE, ft::BIND, ft::EXECUTE] {
                self.flow.sent(tag, Owner::ProxyForwardErrors);
            }
        } else {
            messages::query(&mut self.bout, &raise);
            self.flow.sent(ft::QUERY, Owner::Client);
        }
        Ok(())
    }
}

/// A DO block that raises `message` as SQLSTATE 42501. The message is built by the proxy
/// from fixed text and validated setting names; quotes and dollars are neutralised anyway.
fn raise_sql(code: &str, message: &str) -> String {
    let clean = |s: &str| {
        s.chars()
            .filter(|c| *c != '$')
            .collect::<String>()
            .replace('\'', "''")
    };
    format!(
        "DO $pgtenant_raise$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = '{}'; END$pgtenant_raise$",
        clean(code),
        clean(message)
    )
}
