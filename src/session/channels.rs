//! LISTEN/NOTIFY scoped per tenant. Every tenant shares the database, so a channel name
//! is shared too: the proxy puts a tenant's own prefix in front of every channel its SQL
//! names (`LISTEN`, `UNLISTEN`, `NOTIFY`, `pg_notify(...)`), and on delivery strips it, and
//! drops any notification whose channel does not carry the client's prefix. So a tenant
//! hears only what was sent under its prefix, whichever way its LISTEN was made.

use bytes::{BufMut, BytesMut};

use super::Session;
use crate::policy::sql::{Lexer, Token, TokenKind};
use crate::protocol::backend_tag as bt;
use crate::protocol::codec::{Frame, read_cstr};
use crate::protocol::frontend_tag as ft;
use crate::protocol::messages;

pub use crate::tenant::channel_prefix;

/// Why a statement naming a channel was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRefusal(pub &'static str);

/// Byte offset of `t` in `src` (tokens borrow from the lexed input).
fn offset(src: &[u8], t: &Token) -> usize {
    t.text.as_ptr() as usize - src.as_ptr() as usize
}

/// The bytes of `src` a token covers, quotes included.
fn span(src: &[u8], t: &Token) -> (usize, usize) {
    let at = offset(src, t);
    match t.kind {
        TokenKind::QuotedIdent => (at - 1, at + t.text.len() + 1),
        _ => (at, at + t.text.len()),
    }
}

/// The name an identifier token stands for (unquoted: folded to lower case).
fn ident_value(t: &Token) -> Option<String> {
    match t.kind {
        TokenKind::Ident => Some(String::from_utf8_lossy(t.text).to_ascii_lowercase()),
        TokenKind::QuotedIdent => Some(String::from_utf8_lossy(t.text).replace("\"\"", "\"")),
        _ => None,
    }
}

fn is_word(t: Option<&Token>, w: &str) -> bool {
    t.is_some_and(|t| t.kind == TokenKind::Ident && t.text.eq_ignore_ascii_case(w.as_bytes()))
}

fn is_op(t: Option<&Token>, c: u8) -> bool {
    t.is_some_and(|t| t.kind == TokenKind::Op && t.text == [c])
}

/// Cheap test for SQL that may name a channel (the rewrite runs only then).
pub fn may_name_channel(sql: &[u8]) -> bool {
    let has = |w: &[u8]| sql.windows(w.len()).any(|x| x.eq_ignore_ascii_case(w));
    has(b"listen") || has(b"notify")
}

/// `sql` with every channel it names prefixed with `prefix`; None when nothing names a
/// channel. Refused: a channel spelled in a way the rewrite does not read (`U&"..."`), and
/// NOTIFY or pg_notify inside a function or DO body (the body runs later, unrewritten).
pub fn rewrite_sql(sql: &[u8], prefix: &str) -> Result<Option<Vec<u8>>, ChannelRefusal> {
    if !may_name_channel(sql) {
        return Ok(None);
    }
    let toks: Vec<Token> = Lexer::new(sql).collect();
    // (start, end, replacement) edits in source order.
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut start = 0;
    while start < toks.len() {
        let end = (start..toks.len())
            .find(|&i| is_op(toks.get(i), b';'))
            .unwrap_or(toks.len());
        statement_edits(sql, &toks[start..end], prefix, &mut edits)?;
        start = end + 1;
    }
    if edits.is_empty() {
        return Ok(None);
    }
    edits.sort_by_key(|e| e.0);
    let mut out = Vec::with_capacity(sql.len() + edits.len() * (prefix.len() + 8));
    let mut at = 0;
    for (from, to, text) in edits {
        out.extend_from_slice(&sql[at..from]);
        out.extend_from_slice(text.as_bytes());
        at = to;
    }
    out.extend_from_slice(&sql[at..]);
    Ok(Some(out))
}

fn statement_edits(
    src: &[u8],
    s: &[Token],
    prefix: &str,
    edits: &mut Vec<(usize, usize, String)>,
) -> Result<(), ChannelRefusal> {
    let first = s.first();
    if is_word(first, "do") || is_word(first, "create") {
        let hides = s.iter().any(|t| {
            !matches!(
                t.kind,
                TokenKind::Ident | TokenKind::QuotedIdent | TokenKind::Op
            ) && may_name_channel(t.text)
                && (contains_word(t.text, b"notify") || contains_word(t.text, b"listen"))
        });
        if hides {
            return Err(ChannelRefusal(
                "LISTEN, NOTIFY and pg_notify inside function bodies are refused through pgtenant: notification channels are scoped per tenant",
            ));
        }
    }
    if is_word(first, "listen") || is_word(first, "unlisten") || is_word(first, "notify") {
        match s.get(1) {
            Some(t) if is_op(Some(t), b'*') => {}
            Some(t) if t.kind == TokenKind::QuotedIdent && is_unicode_quoted(src, t) => {
                return Err(ChannelRefusal(
                    "channel names in U&\"...\" form are not supported through pgtenant",
                ));
            }
            Some(t) => {
                if let Some(name) = ident_value(t) {
                    let (from, to) = span(src, t);
                    edits.push((from, to, quote(&format!("{prefix}{name}"))));
                }
            }
            None => {}
        }
    }
    for (i, t) in s.iter().enumerate() {
        let named = ident_value(t).is_some_and(|v| v == "pg_notify");
        if !named || !is_op(s.get(i + 1), b'(') {
            continue;
        }
        let open = span(src, &s[i + 1]).1;
        edits.push((open, open, format!("'{prefix}' || (")));
        let mut depth = 0usize;
        for t in &s[i + 2..] {
            if is_op(Some(t), b'(') || is_op(Some(t), b'[') {
                depth += 1;
            } else if is_op(Some(t), b')') || is_op(Some(t), b']') {
                if depth == 0 {
                    let at = span(src, t).0;
                    edits.push((at, at, ")".into()));
                    break;
                }
                depth -= 1;
            } else if depth == 0 && is_op(Some(t), b',') {
                let at = span(src, t).0;
                edits.push((at, at, ")".into()));
                break;
            }
        }
    }
    Ok(())
}

/// True when the quoted identifier `t` is written `U&"..."`.
fn is_unicode_quoted(src: &[u8], t: &Token) -> bool {
    let at = offset(src, t);
    at >= 3 && src[at - 2] == b'&' && src[at - 3].eq_ignore_ascii_case(&b'u')
}

fn contains_word(text: &[u8], w: &[u8]) -> bool {
    text.windows(w.len()).any(|x| x.eq_ignore_ascii_case(w))
}

/// `name` as a quoted identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The Query or Parse `frame` with its SQL text replaced by `sql`.
fn with_sql(frame: &Frame, sql: &[u8]) -> Option<Frame> {
    let body = frame.body();
    let mut out = BytesMut::with_capacity(frame.raw.len() + sql.len());
    let rest = match frame.tag {
        ft::QUERY => {
            read_cstr(body)?;
            messages::write_msg(&mut out, ft::QUERY, |b| {
                b.put_slice(sql);
                b.put_u8(0);
            });
            return Some(Frame {
                tag: ft::QUERY,
                raw: out.freeze(),
            });
        }
        ft::PARSE => body,
        _ => return None,
    };
    let (name, after_name) = read_cstr(rest)?;
    let (_, params) = read_cstr(after_name)?;
    messages::write_msg(&mut out, ft::PARSE, |b| {
        b.put_slice(name);
        b.put_u8(0);
        b.put_slice(sql);
        b.put_u8(0);
        b.put_slice(params);
    });
    Some(Frame {
        tag: ft::PARSE,
        raw: out.freeze(),
    })
}

/// A NotificationResponse for the client, its channel's prefix stripped; None when the
/// channel does not carry `prefix` (another tenant's, or an unscoped one).
///
/// `own`: (the backend's pid, the client's proxy-issued pid): a notification sent by the
/// client's own backend (its own NOTIFY: a listener is pinned, so it sends on the backend
/// it listens on) carries the pid the client was given, as on PostgreSQL, where drivers
/// compare it with their connection's to skip their own notifications.
pub fn deliverable(body: &[u8], prefix: &str, own: Option<(i32, i32)>) -> Option<BytesMut> {
    let sender = i32::from_be_bytes(body.get(..4)?.try_into().ok()?);
    let pid = match own {
        Some((backend, client)) if backend == sender => client,
        _ => sender,
    };
    let (channel, rest) = read_cstr(&body[4..])?;
    let (payload, _) = read_cstr(rest)?;
    let channel_own = channel.strip_prefix(prefix.as_bytes())?;
    let mut out = BytesMut::new();
    messages::write_msg(&mut out, bt::NOTIFICATION_RESPONSE, |b| {
        b.put_i32(pid);
        b.put_slice(channel_own);
        b.put_u8(0);
        b.put_slice(payload);
        b.put_u8(0);
    });
    Some(out)
}

impl Session {
    /// A Query or Parse with the channels it names prefixed with the tenant's (None: it
    /// names none); Err with the message that refuses it.
    pub(super) fn scope_channels(&self, frame: &Frame) -> Result<Option<Frame>, ChannelRefusal> {
        let text = match frame.tag {
            ft::QUERY => read_cstr(frame.body()).map(|(q, _)| q),
            ft::PARSE => read_cstr(frame.body())
                .and_then(|(_, rest)| read_cstr(rest))
                .map(|(q, _)| q),
            _ => None,
        };
        let Some(text) = text else {
            return Ok(None);
        };
        Ok(rewrite_sql(text, &self.tenant.channel_prefix)?.and_then(|sql| with_sql(frame, &sql)))
    }

    /// Forwards the NotificationResponses in `frames` (whole messages) that belong to the
    /// client's tenant, prefixes stripped.
    pub(super) fn deliver_notifications(&mut self, frames: &[u8]) {
        let backend = self.attachment.conn_mut().map(|b| b.conn().key().pid);
        let own = backend.map(|b| (b, self.me.entry.cancel_pid));
        let mut at = 0;
        while at + 5 <= frames.len() {
            let len = u32::from_be_bytes([
                frames[at + 1],
                frames[at + 2],
                frames[at + 3],
                frames[at + 4],
            ]) as usize;
            let Some(body) = frames.get(at + 5..at + 1 + len) else {
                return;
            };
            if let Some(out) = deliverable(body, &self.tenant.channel_prefix, own) {
                self.cout.extend_from_slice(&out);
            }
            at += 1 + len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "pgt_0123456789ab.";

    fn rw(sql: &str) -> String {
        String::from_utf8(rewrite_sql(sql.as_bytes(), P).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn statements_naming_a_channel_get_the_prefix() {
        assert_eq!(rw("LISTEN jobs"), "LISTEN \"pgt_0123456789ab.jobs\"");
        assert_eq!(
            rw("listen \"Jobs\"\"x\""),
            "listen \"pgt_0123456789ab.Jobs\"\"x\""
        );
        assert_eq!(rw("UNLISTEN Jobs"), "UNLISTEN \"pgt_0123456789ab.jobs\"");
        assert_eq!(
            rw("NOTIFY jobs, 'hi'; select 1; listen b"),
            "NOTIFY \"pgt_0123456789ab.jobs\", 'hi'; select 1; listen \"pgt_0123456789ab.b\""
        );
        assert!(rewrite_sql(b"UNLISTEN *", P).unwrap().is_none());
        assert!(rewrite_sql(b"SELECT 1", P).unwrap().is_none());
        assert!(rewrite_sql(b"SELECT 'listen'", P).unwrap().is_none());
    }

    #[test]
    fn pg_notify_in_any_spelling_gets_the_prefix() {
        assert_eq!(
            rw("SELECT pg_notify('jobs', 'x')"),
            "SELECT pg_notify('pgt_0123456789ab.' || ('jobs'), 'x')"
        );
        assert_eq!(
            rw("select pg_catalog.\"pg_notify\"($1, $2)"),
            "select pg_catalog.\"pg_notify\"('pgt_0123456789ab.' || ($1), $2)"
        );
        assert_eq!(
            rw("SELECT PG_NOTIFY(lower(concat('a', 'b')), 'x'), pg_notify(c, d) FROM t"),
            "SELECT PG_NOTIFY('pgt_0123456789ab.' || (lower(concat('a', 'b'))), 'x'), pg_notify('pgt_0123456789ab.' || (c), d) FROM t"
        );
    }

    #[test]
    fn unreadable_spellings_and_bodies_are_refused() {
        assert!(rewrite_sql(b"LISTEN U&\"a\"", P).is_err());
        assert!(rewrite_sql(b"NOTIFY u&\"a\"", P).is_err());
        assert!(rewrite_sql(b"DO $$BEGIN PERFORM pg_notify('x', 'y'); END$$", P).is_err());
        assert!(
            rewrite_sql(
                b"CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'NOTIFY x'",
                P
            )
            .is_err()
        );
        assert!(
            rewrite_sql(b"DO $$BEGIN RAISE NOTICE 'x'; END$$", P)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn delivery_strips_the_own_prefix_and_drops_the_rest() {
        let frame = |channel: &str| {
            let mut b = Vec::new();
            b.extend_from_slice(&42i32.to_be_bytes());
            b.extend_from_slice(channel.as_bytes());
            b.push(0);
            b.extend_from_slice(b"payload\0");
            b
        };
        let out = deliverable(&frame("pgt_0123456789ab.jobs"), P, None).unwrap();
        assert_eq!(&out[5..], &frame("jobs")[..]);
        assert!(deliverable(&frame("pgt_ffffffffffff.jobs"), P, None).is_none());
        assert!(deliverable(&frame("jobs"), P, None).is_none());
        // Sent by the client's own backend (pid 42): the client's pid; another: as sent.
        let out = deliverable(&frame("pgt_0123456789ab.jobs"), P, Some((42, 7))).unwrap();
        assert_eq!(&out[5..9], &7i32.to_be_bytes());
        let out = deliverable(&frame("pgt_0123456789ab.jobs"), P, Some((41, 7))).unwrap();
        assert_eq!(&out[5..9], &42i32.to_be_bytes());
    }

    #[test]
    fn prefixes_differ_per_tenant_and_are_stable() {
        assert_eq!(channel_prefix("a"), channel_prefix("a"));
        assert_ne!(channel_prefix("a"), channel_prefix("b"));
        assert_eq!(channel_prefix("a").len(), P.len());
    }
}
