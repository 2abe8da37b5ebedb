//! Refusals that need no SQL text: FunctionCall messages (a function named by OID) and the
//! proxy's reserved statement and portal names.

use crate::protocol::RESERVED_PREFIX;
use crate::protocol::codec::{Frame, read_cstr};
use crate::protocol::frontend_tag as ft;

/// The built-in large-object functions (fixed OIDs), what libpq's `lo_*` calls and JDBC's
/// fastpath send as FunctionCall. A call by OID has no SQL text for the guard to read, so
/// nothing else is let through: `set_config` (2078), `query_to_xml`, or a session advisory
/// lock would change the context or leave state for the next client.
const LARGE_OBJECT_FUNCTIONS: [u32; 16] = [
    715, 952, 953, 954, 955, 956, 957, 958, 964, 1004, 3170, 3171, 3172, 3458, 3459, 3460,
];

/// True when a FunctionCall body calls one of the large-object functions.
pub fn is_large_object_call(body: &[u8]) -> bool {
    body.get(..4)
        .and_then(|b| b.try_into().ok())
        .is_some_and(|oid| LARGE_OBJECT_FUNCTIONS.contains(&u32::from_be_bytes(oid)))
}

/// True when a Parse, Bind, Describe, Close or Execute names a proxy-owned statement or portal.
pub fn uses_reserved_name(frame: &Frame) -> bool {
    let body = frame.body();
    let reserved = |name: &[u8]| name.starts_with(RESERVED_PREFIX.as_bytes());
    match frame.tag {
        ft::PARSE | ft::EXECUTE => read_cstr(body).is_some_and(|(n, _)| reserved(n)),
        ft::BIND => read_cstr(body).is_some_and(|(portal, rest)| {
            reserved(portal) || read_cstr(rest).is_some_and(|(stmt, _)| reserved(stmt))
        }),
        ft::DESCRIBE | ft::CLOSE => body
            .get(1..)
            .and_then(read_cstr)
            .is_some_and(|(n, _)| reserved(n)),
        _ => false,
    }
}
