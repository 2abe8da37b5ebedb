//! Fuzz target `scram`: the SCRAM client messages as the frontend reads them, framed
//! (`split_frame`), the SASLInitialResponse decoded (`sasl_initial_response`), then
//! client-first and client-final through [`ScramServer`]. The engine is `protocol::fuzz`.
//!
//! Input: byte 0 picks SCRAM-SHA-256 or -PLUS (bit 0) and the iteration count (bits 1-2);
//! the rest is the client's byte stream (SASLInitialResponse, then SASLResponse). The server
//! nonce is fixed so that recorded exchanges in the corpus still match. Invariants: no
//! panic; server-first echoes the client's nonce and the verifier's salt and iterations; the
//! exchange succeeds only when client-final is exactly the one an independent implementation
//! derives from the password (a mutated message never authenticates), and server-final is
//! that implementation's server signature; peak allocation is bounded by the input.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, BytesMut};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::scram::{SERVER_NONCE_LEN, ScramError, ScramServer, ScramVerifier};
use crate::protocol::codec::split_frame;
use crate::protocol::fuzz::Target;
use crate::protocol::messages;

/// The target.
pub const TARGET: Target = Target {
    name: "scram",
    check,
    alloc_bound: |input| 16 * input.len() + 64 * 1024,
    seeds,
    dictionary: DICTIONARY,
};

const PASSWORD: &[u8] = b"pencil";
const SALT: &[u8] = b"fuzz-salt-16byte";
const NONCE: [u8; SERVER_NONCE_LEN] = *b"fixed-server-nonce";
/// What a TLS connection's tls-server-end-point would be.
const END_POINT: &[u8] = b"hash of the server certificate.";
/// The frontend's limit on messages during authentication (`max_startup_message_size`).
const MAX: usize = 10_000;

const DICTIONARY: &[&[u8]] = &[
    b"n,,",
    b"y,,",
    b"p=tls-server-end-point,,",
    b"p=x,,",
    b"n=",
    b"r=",
    b"c=",
    b"p=",
    b"m=",
    b"biws",
    b"eSws",
    b",",
    b"=",
    b"x=y,",
    b"SCRAM-SHA-256\0",
    b"SCRAM-SHA-256-PLUS\0",
    b"\xff\xff\xff\xff",
    b"Zml4ZWQtc2VydmVyLW5vbmNl",
    b"\xc3\xa9",
    b"\0",
    b"p",
];

fn settings(input: &[u8]) -> (bool, u32) {
    let flags = input.first().copied().unwrap_or(0);
    (flags & 1 == 1, 1 + u32::from((flags >> 1) & 3))
}

fn mechanism(plus: bool) -> &'static [u8] {
    if plus {
        b"SCRAM-SHA-256-PLUS"
    } else {
        b"SCRAM-SHA-256"
    }
}

fn check(input: &[u8]) -> Result<&'static str, String> {
    let (plus, iterations) = settings(input);
    let verifier = ScramVerifier::from_password(PASSWORD, SALT, iterations);
    let mut buf = BytesMut::from(input.get(1..).unwrap_or_default());
    let first = match split_frame(&mut buf, MAX) {
        Ok(Some(f)) => f,
        Ok(None) => return Ok("first_incomplete"),
        Err(_) => return Ok("first_bad_frame"),
    };
    let Some((mech, data)) = messages::sasl_initial_response(&first.raw) else {
        return Ok("bad_initial_response");
    };
    if mech != mechanism(plus) {
        return Ok("other_mechanism");
    }
    let mut server = ScramServer::new(verifier, plus.then(|| END_POINT.to_vec()));
    let server_first = match server.client_first_with_nonce(data, NONCE) {
        Ok(s) => s,
        Err(e) => return Ok(error_name("first", &e)),
    };
    check_server_first(data, &server_first, iterations)?;
    let fin = match split_frame(&mut buf, MAX) {
        Ok(Some(f)) if f.tag == b'p' => f,
        Ok(Some(_)) => return Ok("final_wrong_tag"),
        Ok(None) => return Ok("final_incomplete"),
        Err(_) => return Ok("final_bad_frame"),
    };
    let server_final = match server.handle_client_final(fin.body()) {
        Ok(s) => s,
        Err(e) => return Ok(error_name("final", &e)),
    };
    let (want_final, want_server_final) = reference(data, &server_first, plus, iterations);
    if fin.body() != want_final || server_final != want_server_final {
        return Err(format!(
            "authenticated {:?} (server said {:?}); only {:?} should",
            String::from_utf8_lossy(fin.body()),
            String::from_utf8_lossy(&server_final),
            String::from_utf8_lossy(&want_final),
        ));
    }
    Ok("authenticated")
}

fn error_name(step: &str, e: &ScramError) -> &'static str {
    match (step, e) {
        ("first", ScramError::Malformed(_)) => "first_malformed",
        ("first", ScramError::UnsupportedChannelBinding) => "first_unsupported_binding",
        ("first", ScramError::ChannelBindingMismatch) => "first_binding_mismatch",
        ("first", _) => "first_other_error",
        (_, ScramError::Malformed(_)) => "final_malformed",
        (_, ScramError::ChannelBindingMismatch) => "final_binding_mismatch",
        (_, ScramError::NonceMismatch) => "final_nonce_mismatch",
        (_, ScramError::InvalidProof) => "final_invalid_proof",
        _ => "final_other_error",
    }
}

/// server-first is `r=<client nonce><server nonce>,s=<salt>,i=<iterations>`.
fn check_server_first(client_first: &[u8], server_first: &[u8], iter: u32) -> Result<(), String> {
    let text = String::from_utf8_lossy(client_first);
    let client_nonce = text
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .unwrap_or("?");
    let want = format!(
        "r={client_nonce}{},s={},i={iter}",
        STANDARD.encode(NONCE),
        STANDARD.encode(SALT)
    );
    if server_first != want.as_bytes() {
        return Err(format!(
            "server-first {:?}, want {want:?}",
            String::from_utf8_lossy(server_first)
        ));
    }
    Ok(())
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// RFC 5802, written again from the RFC: the client-final a client holding the password
/// sends after `server_first`, and the server-final it expects back.
fn reference(
    client_first: &[u8],
    server_first: &[u8],
    plus: bool,
    iter: u32,
) -> (Vec<u8>, Vec<u8>) {
    let mut u = hmac(PASSWORD, &[SALT, &1u32.to_be_bytes()].concat());
    let mut salted = u.clone();
    for _ in 1..iter {
        u = hmac(PASSWORD, &u);
        salted.iter_mut().zip(&u).for_each(|(s, x)| *s ^= x);
    }
    let text = String::from_utf8_lossy(client_first);
    let (flag, bare) = text.split_once(",,").unwrap_or_default();
    let server_first = String::from_utf8_lossy(server_first);
    let nonce = server_first.split(',').next().unwrap_or_default();
    let mut binding = format!("{flag},,").into_bytes();
    if plus {
        binding.extend_from_slice(END_POINT);
    }
    let without_proof = format!("c={},{nonce}", STANDARD.encode(binding));
    let auth = format!("{bare},{server_first},{without_proof}");
    let client_key = hmac(&salted, b"Client Key");
    let signature = hmac(&Sha256::digest(&client_key), auth.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let server_signature = hmac(&hmac(&salted, b"Server Key"), auth.as_bytes());
    (
        format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes(),
        format!("v={}", STANDARD.encode(server_signature)).into_bytes(),
    )
}

/// Whole exchanges by a real client (postgres-protocol's), framed as the frontend reads them.
fn seeds() -> Vec<Vec<u8>> {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    let mut out = Vec::new();
    for flags in 0..8u8 {
        let (plus, iterations) = settings(&[flags]);
        let binding = match (plus, flags & 2) {
            (true, _) => ChannelBinding::tls_server_end_point(END_POINT.to_vec()),
            (false, 0) => ChannelBinding::unsupported(),
            (false, _) => ChannelBinding::unrequested(),
        };
        let mut client = ScramSha256::new(PASSWORD, binding);
        let verifier = ScramVerifier::from_password(PASSWORD, SALT, iterations);
        let mut server = ScramServer::new(verifier, plus.then(|| END_POINT.to_vec()));
        let first = client.message().to_vec();
        let server_first = server
            .client_first_with_nonce(&first, NONCE)
            .expect("real client");
        client.update(&server_first).expect("real client");
        let mut stream = BytesMut::new();
        messages::write_msg(&mut stream, b'p', |b| {
            b.put_slice(mechanism(plus));
            b.put_u8(0);
            b.put_i32(first.len() as i32);
            b.put_slice(&first);
        });
        messages::write_msg(&mut stream, b'p', |b| b.put_slice(client.message()));
        out.push([&[flags][..], &stream].concat());
    }
    out
}
