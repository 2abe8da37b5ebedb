//! What tenant isolation rests on in this configuration, said in the log at start-up (kept
//! apart from the key, which the configuration itself holds).

/// Checks the context mode at start-up and says in the log what isolation rests on;
/// returns a problem that must stop the start.
pub fn startup_check(config: &crate::config::Config) -> Option<String> {
    match config.context.mode {
        crate::config::ContextMode::Verified if config.context.key.is_none() => {
            return Some(
                "context.key_file: verified mode needs a key (context.key_file or context.key_env)"
                    .into(),
            );
        }
        crate::config::ContextMode::Verified => tracing::info!(
            schema = %config.context.schema,
            key_id = config.context.key.as_ref().map(|k| k.id()),
            "verified tenant context: PostgreSQL checks every context value"
        ),
        crate::config::ContextMode::Plain => tracing::warn!(
            "context.mode = \"plain\": tenant isolation rests on pgtenant's SQL guard alone; \
             any SQL it misses can change the context. Use context.mode = \"verified\" (pgtenant db install)"
        ),
    }
    if !config.server.sql_guard {
        tracing::warn!(
            "server.sql_guard = false: THE SQL GUARD IS OFF; tenant SQL reaches PostgreSQL unread. \
             For tests and audits of the verified context only, never in production"
        );
    }
    None
}
