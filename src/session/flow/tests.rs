//! Unit tests of the response accounting.

use super::*;

#[test]
fn injected_replies_are_swallowed_and_client_replies_forwarded() {
    let mut f = Flow::default();
    f.sent(ft::BIND, Owner::Proxy);
    f.sent(ft::EXECUTE, Owner::Proxy);
    f.sent(ft::QUERY, Owner::Client);
    assert!(f.awaiting_ready());
    assert_eq!(f.on_backend(bt::BIND_COMPLETE), Disposition::Swallow);
    assert_eq!(f.on_backend(bt::DATA_ROW), Disposition::Swallow);
    assert_eq!(f.on_backend(bt::COMMAND_COMPLETE), Disposition::Swallow);
    assert_eq!(f.on_backend(bt::ROW_DESCRIPTION), Disposition::Forward);
    assert_eq!(f.on_backend(bt::DATA_ROW), Disposition::Forward);
    assert_eq!(f.on_backend(bt::COMMAND_COMPLETE), Disposition::Forward);
    assert_eq!(f.on_backend(bt::READY_FOR_QUERY), Disposition::Forward);
    assert!(!f.awaiting_ready());
    assert!(f.is_idle());
}

#[test]
fn notices_about_the_proxys_requests_never_reach_the_client() {
    let mut f = Flow::default();
    // Async ones with nothing pending go through.
    assert_eq!(f.on_backend(bt::NOTICE_RESPONSE), Disposition::Forward);
    f.sent(ft::BIND, Owner::Proxy);
    f.sent(ft::EXECUTE, Owner::ProxyForwardErrors);
    f.sent(ft::QUERY, Owner::Client);
    assert_eq!(f.on_backend(bt::NOTICE_RESPONSE), Disposition::Swallow);
    assert_eq!(f.on_backend(bt::BIND_COMPLETE), Disposition::Swallow);
    assert_eq!(f.on_backend(bt::NOTICE_RESPONSE), Disposition::Swallow);
    assert_eq!(f.on_backend(bt::COMMAND_COMPLETE), Disposition::Swallow);
    // The client's own statement's notices are its own.
    assert_eq!(f.on_backend(bt::NOTICE_RESPONSE), Disposition::Forward);
    assert_eq!(f.on_backend(bt::PARAMETER_STATUS), Disposition::Forward);
    assert_eq!(f.on_backend(bt::READY_FOR_QUERY), Disposition::Forward);
}

#[test]
fn proxy_syncs_do_not_hold_up_client_frames() {
    let mut f = Flow::default();
    for t in [ft::BIND, ft::EXECUTE, ft::SYNC] {
        f.sent(t, Owner::Proxy);
    }
    assert!(!f.awaiting_ready());
    f.sent(ft::PARSE, Owner::Client);
    assert!(!f.awaiting_ready());
    f.sent(ft::SYNC, Owner::Client);
    assert!(f.awaiting_ready());
    for reply in [bt::BIND_COMPLETE, bt::COMMAND_COMPLETE, bt::READY_FOR_QUERY] {
        assert_eq!(f.on_backend(reply), Disposition::Swallow);
    }
    assert!(f.awaiting_ready());
}

#[test]
fn a_split_query_head_swallows_only_its_ready_for_query() {
    let mut f = Flow::default();
    f.sent(ft::QUERY, Owner::ClientHead);
    assert!(f.awaiting_ready(), "the client waits for the whole Query");
    assert_eq!(f.on_backend(bt::COMMAND_COMPLETE), Disposition::Forward);
    assert_eq!(f.on_backend(bt::READY_FOR_QUERY), Disposition::HeadDone);
    assert!(f.is_idle());
    f.sent(ft::QUERY, Owner::ClientHead);
    assert_eq!(f.on_backend(bt::COMMAND_COMPLETE), Disposition::Forward);
    assert_eq!(f.on_backend(bt::ERROR_RESPONSE), Disposition::Forward);
    assert_eq!(
        f.on_backend(bt::READY_FOR_QUERY),
        Disposition::Forward,
        "after an error the head's ReadyForQuery ends the client's Query"
    );
    assert!(f.is_idle() && !f.awaiting_ready());
}

#[test]
fn extended_error_skips_to_sync() {
    let mut f = Flow::default();
    for t in [ft::PARSE, ft::BIND, ft::EXECUTE, ft::SYNC] {
        f.sent(t, Owner::Client);
    }
    assert_eq!(f.on_backend(bt::ERROR_RESPONSE), Disposition::Forward);
    assert_eq!(f.on_backend(bt::READY_FOR_QUERY), Disposition::Forward);
    assert!(f.is_idle());
}

#[test]
fn an_extended_error_skips_a_query_and_a_function_call_pipelined_before_the_sync() {
    // PostgreSQL ignores every message after an extended-protocol error up to the
    // Sync, a simple Query or FunctionCall too: neither gets a reply, so neither may be
    // waited for (the client's Sync behind them would be held back for ever).
    for middle in [ft::QUERY, ft::FUNCTION_CALL] {
        let mut f = Flow::default();
        for t in [ft::PARSE, ft::BIND, ft::EXECUTE] {
            f.sent(t, Owner::Client);
        }
        f.sent(middle, Owner::Client);
        assert!(f.awaiting_ready());
        assert_eq!(f.on_backend(bt::PARSE_COMPLETE), Disposition::Forward);
        assert_eq!(f.on_backend(bt::ERROR_RESPONSE), Disposition::Forward);
        assert!(!f.awaiting_ready(), "nothing answers the skipped {middle}");
        assert!(f.backend_discards() && !f.is_idle());
        f.sent(ft::SYNC, Owner::Client);
        assert!(f.awaiting_ready());
        assert_eq!(f.on_backend(bt::READY_FOR_QUERY), Disposition::Forward);
        assert!(f.is_settled(), "after {middle}");
    }
    // What follows the Sync is answered as usual.
    let mut f = Flow::default();
    for t in [ft::BIND, ft::EXECUTE, ft::QUERY, ft::SYNC, ft::QUERY] {
        f.sent(t, Owner::Client);
    }
    assert_eq!(f.on_backend(bt::ERROR_RESPONSE), Disposition::Forward);
    assert_eq!(f.on_backend(bt::READY_FOR_QUERY), Disposition::Forward);
    assert!(f.awaiting_ready(), "the Query after the Sync runs");
    assert_eq!(f.on_backend(bt::COMMAND_COMPLETE), Disposition::Forward);
    assert_eq!(f.on_backend(bt::READY_FOR_QUERY), Disposition::Forward);
    assert!(f.is_settled());
}

#[test]
fn failed_injection_is_reported() {
    let mut f = Flow::default();
    f.sent(ft::BIND, Owner::Proxy);
    f.sent(ft::EXECUTE, Owner::Proxy);
    f.sent(ft::QUERY, Owner::Client);
    assert_eq!(
        f.on_backend(bt::ERROR_RESPONSE),
        Disposition::ProxyRequestFailed
    );
    assert!(
        f.awaiting_ready(),
        "the client's Query behind it is answered by the proxy"
    );
}

#[test]
fn raise_stand_in_forwards_only_its_error() {
    let mut f = Flow::default();
    f.sent(ft::PARSE, Owner::Client);
    f.sent(ft::PARSE, Owner::ProxyForwardErrors);
    f.sent(ft::BIND, Owner::ProxyForwardErrors);
    f.sent(ft::EXECUTE, Owner::ProxyForwardErrors);
    f.sent(ft::BIND, Owner::Client);
    f.sent(ft::SYNC, Owner::Client);
    assert_eq!(f.on_backend(bt::PARSE_COMPLETE), Disposition::Forward);
    assert_eq!(f.on_backend(bt::PARSE_COMPLETE), Disposition::Swallow);
    assert_eq!(f.on_backend(bt::BIND_COMPLETE), Disposition::Swallow);
    assert_eq!(f.on_backend(bt::ERROR_RESPONSE), Disposition::Forward);
    assert_eq!(f.on_backend(bt::READY_FOR_QUERY), Disposition::Forward);
    assert!(f.is_idle());
}

#[test]
fn parses_skipped_after_an_error_are_reported_as_failed() {
    let mut f = Flow::default();
    f.sent(ft::BIND, Owner::Client);
    f.sent_parse(
        ft::PARSE,
        Owner::ProxyForwardErrors,
        Some("pgtenant_s_1".into()),
    );
    f.sent(ft::SYNC, Owner::Client);
    assert_eq!(f.on_backend(bt::ERROR_RESPONSE), Disposition::Forward);
    assert_eq!(
        f.take_failed_statements(),
        vec![FailedParse {
            statement: "pgtenant_s_1".into(),
            by_client: false
        }]
    );
    assert_eq!(f.on_backend(bt::READY_FOR_QUERY), Disposition::Forward);
    assert!(f.is_idle());
}

#[test]
fn the_parse_an_error_answers_is_named() {
    let mut f = Flow::default();
    f.sent_parse(
        ft::PARSE,
        Owner::ProxyForwardErrors,
        Some("pgtenant_s_3".into()),
    );
    f.sent(ft::BIND, Owner::Client);
    f.sent(ft::SYNC, Owner::Client);
    assert_eq!(
        f.front_parse(Owner::ProxyForwardErrors),
        Some("pgtenant_s_3")
    );
    assert_eq!(f.front_parse(Owner::Client), None);
    assert_eq!(f.on_backend(bt::ERROR_RESPONSE), Disposition::Forward);
    // A re-prepare's own failure keeps the client's statement (the session decides by the
    // error's class whether PostgreSQL refused its text).
    assert_eq!(
        f.take_failed_statements(),
        vec![FailedParse {
            statement: "pgtenant_s_3".into(),
            by_client: false
        }]
    );
    assert_eq!(f.front_parse(Owner::ProxyForwardErrors), None);
    assert_eq!(f.on_backend(bt::READY_FOR_QUERY), Disposition::Forward);
    assert!(f.is_idle());
}

#[test]
fn own_statements_skipped_after_an_error_are_reported() {
    let mut f = Flow::default();
    f.sent(ft::BIND, Owner::Client);
    f.sent_own(1);
    f.sent(ft::SYNC, Owner::Client);
    assert_eq!(f.on_backend(bt::ERROR_RESPONSE), Disposition::Forward);
    assert_eq!(
        f.take_failed_statements(),
        vec![FailedParse {
            statement: OWN_STATEMENTS.into(),
            by_client: false
        }]
    );
    assert_eq!(f.on_backend(bt::READY_FOR_QUERY), Disposition::Forward);
    assert!(f.is_idle());
}

#[test]
fn requests_after_an_error_and_before_sync_expect_no_reply() {
    let mut f = Flow::default();
    f.sent(ft::BIND, Owner::Client);
    assert_eq!(f.on_backend(bt::ERROR_RESPONSE), Disposition::Forward);
    // No Sync was sent yet: the backend now discards everything up to one.
    assert!(f.backend_discards());
    assert!(!f.is_idle(), "a discarding backend must not be released");
    f.sent(ft::EXECUTE, Owner::Client);
    f.sent_parse(ft::PARSE, Owner::Proxy, Some("pgtenant_s_2".into()));
    assert_eq!(
        f.take_failed_statements(),
        vec![FailedParse {
            statement: "pgtenant_s_2".into(),
            by_client: false
        }]
    );
    f.sent(ft::SYNC, Owner::Client);
    assert!(!f.backend_discards());
    assert_eq!(f.on_backend(bt::READY_FOR_QUERY), Disposition::Forward);
    assert!(f.is_idle());
    assert!(!f.awaiting_ready());
}

#[test]
fn answered_requests_without_sync_are_not_settled() {
    let mut f = Flow::default();
    for t in [ft::PARSE, ft::BIND, ft::EXECUTE, ft::FLUSH] {
        f.sent(t, Owner::Client);
    }
    f.on_backend(bt::PARSE_COMPLETE);
    f.on_backend(bt::BIND_COMPLETE);
    f.on_backend(bt::COMMAND_COMPLETE);
    assert!(f.is_idle(), "every reply arrived");
    assert!(!f.is_settled(), "the transaction stays open until a Sync");
    f.sent(ft::SYNC, Owner::Client);
    assert!(!f.is_settled());
    f.on_backend(bt::READY_FOR_QUERY);
    assert!(f.is_settled());
    f.sent(ft::FLUSH, Owner::Client);
    assert!(!f.is_settled(), "a lone Flush is conservative too");
    f.sent(ft::QUERY, Owner::Client);
    f.on_backend(bt::READY_FOR_QUERY);
    assert!(
        f.is_settled(),
        "a simple Query ends the implicit transaction"
    );
}

#[test]
fn copy_messages_wait_for_an_executes_outcome_with_one_flush() {
    let mut f = Flow::default();
    f.sent(ft::PARSE, Owner::Client);
    assert!(!f.copy_may_start());
    f.sent(ft::BIND, Owner::Client);
    f.sent(ft::EXECUTE, Owner::Client);
    assert!(f.copy_may_start());
    assert!(f.take_flush_for_copy());
    assert!(!f.take_flush_for_copy(), "one Flush per wait");
    f.sent(ft::FLUSH, Owner::Proxy);
    f.on_backend(bt::PARSE_COMPLETE);
    f.on_backend(bt::BIND_COMPLETE);
    assert!(f.copy_may_start());
    // Not a COPY: the copy messages are stray, and the next wait flushes again.
    f.on_backend(bt::COMMAND_COMPLETE);
    assert!(!f.copy_may_start());
    f.sent(ft::EXECUTE, Owner::Client);
    assert!(f.take_flush_for_copy());
    f.copy_in_started();
    assert!(f.take_flush_for_copy(), "a COPY ends the wait");
    // The proxy's own Executes never start a COPY.
    let mut f = Flow::default();
    f.sent(ft::EXECUTE, Owner::Proxy);
    assert!(!f.copy_may_start());
}

#[test]
fn copy_from_execute_drops_ignored_syncs() {
    let mut f = Flow::default();
    for t in [ft::PARSE, ft::BIND, ft::EXECUTE, ft::SYNC] {
        f.sent(t, Owner::Client);
    }
    f.on_backend(bt::PARSE_COMPLETE);
    f.on_backend(bt::BIND_COMPLETE);
    f.copy_in_started();
    assert!(!f.awaiting_ready());
    assert!(!f.is_settled(), "a Sync must follow CopyDone");
    f.sent(ft::SYNC, Owner::Client);
    assert_eq!(f.on_backend(bt::COMMAND_COMPLETE), Disposition::Forward);
    assert_eq!(f.on_backend(bt::READY_FOR_QUERY), Disposition::Forward);
    assert!(f.is_idle());
}
