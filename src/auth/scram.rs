//! Pure (no I/O) SCRAM-SHA-256 / SCRAM-SHA-256-PLUS server (RFC 5802, RFC 7677) with PostgreSQL conventions.
//!
//! The caller frames the Postgres SASL messages; this module only produces and checks the SCRAM text payloads.

use std::fmt;
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Upper bound on client SCRAM messages, so a hostile client cannot make us buffer or parse huge input.
const MAX_MESSAGE_LEN: usize = 2048;
/// Iteration count used for new verifiers; matches PostgreSQL's default `scram_iterations`.
const DEFAULT_ITERATIONS: u32 = 4096;
/// Salt length used for new verifiers; matches PostgreSQL's default.
const SALT_LEN: usize = 16;
/// Random bytes in the server's nonce contribution; matches PostgreSQL.
pub(crate) const SERVER_NONCE_LEN: usize = 18;
/// The only channel-binding type we implement for SCRAM-SHA-256-PLUS.
const CB_TYPE_FLAG: &str = "p=tls-server-end-point";

/// Errors from verifier parsing or a SCRAM exchange; messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    /// The client message could not be parsed.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding we do not offer on this exchange.
    #[error("unsupported SCRAM channel binding")]
    UnsupportedChannelBinding,
    /// The channel-binding data (or its absence) does not match what the server expects.
    #[error("SCRAM channel binding mismatch")]
    ChannelBindingMismatch,
    /// The nonce in client-final differs from the one the server issued.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// The client proof is wrong (bad password or unknown user).
    #[error("invalid SCRAM proof")]
    InvalidProof,
    /// A stored verifier string is not in PostgreSQL's SCRAM-SHA-256 format.
    #[error("invalid SCRAM verifier: {0}")]
    InvalidVerifier(&'static str),
    /// A step was called in the wrong order or after the exchange ended.
    #[error("SCRAM exchange step out of order")]
    OutOfOrder,
}

/// A stored SCRAM-SHA-256 verifier, in PostgreSQL's pg_authid format.
#[derive(Clone)]
pub struct ScramVerifier {
    /// PBKDF2 iteration count the client must use.
    pub iterations: u32,
    /// Salt the client must use.
    pub salt: Vec<u8>,
    /// SHA-256(ClientKey); lets us check proofs without knowing the password.
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key"); lets us prove our identity to the client.
    pub server_key: [u8; 32],
}

impl ScramVerifier {
    /// Parse "SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>".
    pub fn parse(s: &str) -> Result<Self, ScramError> {
        let bad = ScramError::InvalidVerifier;
        let fields = s.strip_prefix("SCRAM-SHA-256$").and_then(|rest| {
            let (params, keys) = rest.split_once('$')?;
            Some((params.split_once(':')?, keys.split_once(':')?))
        });
        let Some(((iter_s, salt_s), (stored_s, server_s))) = fields else {
            return Err(bad(
                "expected SCRAM-SHA-256$<iter>:<salt>$<stored>:<server>",
            ));
        };
        let digits = iter_s.bytes().all(|b| b.is_ascii_digit());
        let iterations = iter_s.parse::<u32>().ok().filter(|&i| digits && i > 0);
        let iterations = iterations.ok_or(bad("bad iteration count"))?;
        let salt = STANDARD.decode(salt_s).ok().filter(|s| !s.is_empty());
        let salt = salt.ok_or(bad("bad salt"))?;
        Ok(Self {
            iterations,
            salt,
            stored_key: decode_32(stored_s).ok_or(bad("bad stored key"))?,
            server_key: decode_32(server_s).ok_or(bad("bad server key"))?,
        })
    }

    /// Mint a verifier from a plaintext password (for `pgtenant hash-password` and tests), after SASLprep as PostgreSQL does.
    pub fn hash_password(password: &str) -> String {
        // Random 16-byte salt, 4096 iterations, as PostgreSQL does. libpq, node-postgres and
        // tokio-postgres hash the SASLprep form of the password, so the verifier must too.
        let mut salt = [0u8; SALT_LEN];
        rand::rng().fill_bytes(&mut salt);
        let prepared = super::saslprep::prepare(password);
        Self::from_password(&prepared, &salt, DEFAULT_ITERATIONS).to_string()
    }

    /// A verifier that never matches, used for unknown users so timing and flow look identical (no user enumeration).
    pub fn dummy(username: &str) -> Self {
        // Salt and keys are HMACs of the user name under a random per-process secret: an unknown user sees a
        // stable salt across attempts, and StoredKey is a secret SHA-256-sized value no proof can hit.
        static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
        let secret = SECRET.get_or_init(|| {
            let mut s = [0u8; 32];
            rand::rng().fill_bytes(&mut s);
            s
        });
        let user = username.as_bytes();
        let salt_full = hmac_sha256(secret, &[b"salt\0", user]);
        Self {
            iterations: DEFAULT_ITERATIONS,
            salt: salt_full.iter().take(SALT_LEN).copied().collect(),
            stored_key: hmac_sha256(secret, &[b"stored\0", user]),
            server_key: hmac_sha256(secret, &[b"server\0", user]),
        }
    }

    /// Derive the keys per RFC 5802 from raw password bytes; shared by `hash_password` and tests.
    pub(crate) fn from_password(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let salted = hi(password, salt, iterations);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac_sha256(&salted, &[b"Server Key"]),
        }
    }
}

/// Renders the pg_authid string form (the inverse of `parse`).
impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }
}

/// Hides salt and keys so verifiers can be logged safely.
impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Exchange progress; lets us reject steps called out of order.
enum State {
    Initial,
    SentServerFirst(Pending),
    Done,
}

/// What client-final is checked against, captured when server-first is sent.
struct Pending {
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// Server side of one SCRAM exchange.
pub struct ScramServer {
    verifier: ScramVerifier,
    channel_binding: Option<Vec<u8>>,
    state: State,
}

/// Shows only the exchange phase, never keys or channel-binding data.
impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.state {
            State::Initial => "initial",
            State::SentServerFirst(_) => "sent-server-first",
            State::Done => "done",
        };
        f.debug_struct("ScramServer")
            .field("plus", &self.channel_binding.is_some())
            .field("phase", &phase)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// `channel_binding`: Some(tls-server-end-point hash) for SCRAM-SHA-256-PLUS, None for SCRAM-SHA-256.
    pub fn new(verifier: ScramVerifier, channel_binding: Option<Vec<u8>>) -> Self {
        Self {
            verifier,
            channel_binding,
            state: State::Initial,
        }
    }

    /// Takes the client-first-message bytes; returns the server-first-message bytes.
    pub fn handle_client_first(&mut self, client_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let mut server_nonce = [0u8; SERVER_NONCE_LEN];
        rand::rng().fill_bytes(&mut server_nonce);
        self.client_first_with_nonce(client_first, server_nonce)
    }

    /// `handle_client_first` with the server's nonce given (the fuzz target fixes it so a
    /// recorded client-final still matches; everything else must use a random one).
    pub(crate) fn client_first_with_nonce(
        &mut self,
        client_first: &[u8],
        server_nonce: [u8; SERVER_NONCE_LEN],
    ) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::Initial) {
            return Err(ScramError::OutOfOrder);
        }
        // Any failure ends the exchange; it can't be retried on the same object.
        self.state = State::Done;
        let msg = as_message(client_first)?;

        let mut gs2 = msg.splitn(3, ',');
        let (Some(flag), Some(authzid), Some(bare)) = (gs2.next(), gs2.next(), gs2.next()) else {
            return Err(ScramError::Malformed("missing gs2 header"));
        };
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "authorization identity is not supported",
            ));
        }
        match (flag, self.channel_binding.is_some()) {
            ("n" | "y", false) | (CB_TYPE_FLAG, true) => {}
            // Client picked the PLUS mechanism but did not bind: refuse rather than silently downgrade.
            ("n" | "y", true) => return Err(ScramError::ChannelBindingMismatch),
            (f, _) if f.starts_with("p=") => return Err(ScramError::UnsupportedChannelBinding),
            _ => return Err(ScramError::Malformed("invalid channel binding flag")),
        }

        if bare.starts_with("m=") {
            return Err(ScramError::Malformed("mandatory extension"));
        }
        let mut attrs = bare.split(',');
        // The user name is ignored, as PostgreSQL does: the startup packet already named the role.
        attr(attrs.next(), "n=", "missing username attribute")?;
        let client_nonce = attr(attrs.next(), "r=", "missing nonce attribute")?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ScramError::Malformed("invalid client nonce"));
        }
        check_extensions(attrs)?;

        let nonce = format!("{client_nonce}{}", STANDARD.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let out = server_first.clone().into_bytes();
        self.state = State::SentServerFirst(Pending {
            gs2_header: format!("{flag},,"),
            client_first_bare: bare.to_owned(),
            server_first,
            nonce,
        });
        Ok(out)
    }

    /// Takes the client-final-message; returns the server-final-message ("v=...") when the proof is valid.
    pub fn handle_client_final(&mut self, client_final: &[u8]) -> Result<Vec<u8>, ScramError> {
        let State::SentServerFirst(p) = std::mem::replace(&mut self.state, State::Done) else {
            return Err(ScramError::OutOfOrder);
        };
        let msg = as_message(client_final)?;

        // The proof is always the last attribute and is excluded from AuthMessage.
        let (without_proof, proof_attr) = msg
            .rsplit_once(',')
            .ok_or(ScramError::Malformed("missing proof"))?;
        let proof_b64 = attr(Some(proof_attr), "p=", "missing proof")?;
        let mut attrs = without_proof.split(',');
        let cbind_b64 = attr(attrs.next(), "c=", "missing channel binding attribute")?;
        let client_nonce = attr(attrs.next(), "r=", "missing nonce attribute")?;
        check_extensions(attrs)?;

        let cbind = STANDARD
            .decode(cbind_b64)
            .map_err(|_| ScramError::Malformed("invalid channel binding encoding"))?;
        let mut expected = p.gs2_header.into_bytes();
        expected.extend_from_slice(self.channel_binding.as_deref().unwrap_or_default());
        if !ct_eq(&cbind, &expected) {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if client_nonce != p.nonce {
            return Err(ScramError::NonceMismatch);
        }
        let proof = decode_32(proof_b64).ok_or(ScramError::Malformed("invalid proof encoding"))?;

        let auth_message = format!("{},{},{without_proof}", p.client_first_bare, p.server_first);
        let client_signature = hmac_sha256(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        let computed_stored: [u8; 32] = Sha256::digest(client_key).into();
        if !ct_eq(&computed_stored, &self.verifier.stored_key) {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", STANDARD.encode(server_signature)).into_bytes())
    }
}

/// Enforce the size limit and UTF-8 before any parsing.
fn as_message(bytes: &[u8]) -> Result<&str, ScramError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(ScramError::Malformed("message too long"));
    }
    std::str::from_utf8(bytes).map_err(|_| ScramError::Malformed("message is not UTF-8"))
}

/// Take the value of attribute `name` (e.g. "r="), or fail with `err`.
fn attr<'a>(a: Option<&'a str>, name: &str, err: &'static str) -> Result<&'a str, ScramError> {
    a.and_then(|a| a.strip_prefix(name))
        .ok_or(ScramError::Malformed(err))
}

/// Optional extensions are ignored, but each must still look like `x=value` (as in PostgreSQL).
fn check_extensions<'a>(attrs: impl Iterator<Item = &'a str>) -> Result<(), ScramError> {
    for a in attrs {
        let mut b = a.bytes();
        match (b.next(), b.next()) {
            (Some(c), Some(b'=')) if c.is_ascii_alphabetic() => {}
            _ => return Err(ScramError::Malformed("invalid attribute")),
        }
    }
    Ok(())
}

/// Decode base64 that must hold exactly 32 bytes (keys and proofs).
fn decode_32(s: &str) -> Option<[u8; 32]> {
    STANDARD.decode(s).ok()?.try_into().ok()
}

/// HMAC-SHA-256 over the concatenation of `parts`; infallible because keys are normalized to one block.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = keyed_hmac(key);
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Build an HMAC from an arbitrary-length key without the fallible `new_from_slice` (RFC 2104 key handling).
fn keyed_hmac(key: &[u8]) -> HmacSha256 {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        let digest: [u8; 32] = Sha256::digest(key).into();
        block.iter_mut().zip(digest).for_each(|(b, k)| *b = k);
    } else {
        block.iter_mut().zip(key).for_each(|(b, k)| *b = *k);
    }
    <HmacSha256 as KeyInit>::new(&block.into())
}

/// RFC 5802 Hi(): PBKDF2-HMAC-SHA-256 with a single 32-byte output block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let base = keyed_hmac(password);
    let mut mac = base.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = mac.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        let mut mac = base.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes().into();
        out.iter_mut().zip(u).for_each(|(o, x)| *o ^= x);
    }
    out
}

/// Constant-time equality so proof checks leak no timing about how many bytes matched.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::ScramError::*;
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    macro_rules! assert_err {
        ($e:expr, $p:pat) => {{
            let r = $e;
            assert!(matches!(r, Err($p)), "{r:?}");
        }};
    }

    type Outcome = Result<(), ScramError>;

    /// Run a full exchange with postgres-protocol's client; Ok only if both sides accept.
    fn exchange(v: &str, pw: &[u8], cb: ChannelBinding, scb: Option<Vec<u8>>) -> Outcome {
        let mut server = ScramServer::new(ScramVerifier::parse(v)?, scb);
        let mut client = ScramSha256::new(pw, cb);
        let client_err = |_| Malformed("client rejected server message");
        let first = server.handle_client_first(client.message())?;
        client.update(&first).map_err(client_err)?;
        let fin = server.handle_client_final(client.message())?;
        client.finish(&fin).map_err(client_err)
    }

    /// A server that has already answered a real client's client-first.
    fn started(v: &ScramVerifier) -> (ScramServer, ScramSha256) {
        let mut server = ScramServer::new(v.clone(), None);
        let mut client = ScramSha256::new(b"secret", unsupported());
        let first = server.handle_client_first(client.message()).unwrap();
        client.update(&first).unwrap();
        (server, client)
    }

    fn unsupported() -> ChannelBinding {
        ChannelBinding::unsupported()
    }

    #[test]
    fn full_exchange_with_postgres_protocol_verifier() {
        let v = postgres_protocol::password::scram_sha_256(b"secret");
        exchange(&v, b"secret", unsupported(), None).unwrap();
        exchange(&v, b"secret", ChannelBinding::unrequested(), None).unwrap();
    }

    #[test]
    fn full_exchange_with_hash_password_verifier() {
        let v = ScramVerifier::hash_password("secret");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"));
        let parsed = ScramVerifier::parse(&v).unwrap();
        assert_eq!((parsed.salt.len(), parsed.to_string()), (16, v.clone()));
        exchange(&v, b"secret", unsupported(), None).unwrap();
        // Passwords longer than the HMAC block take the hashed-key path.
        let long = "x".repeat(100);
        let v = ScramVerifier::hash_password(&long);
        exchange(&v, long.as_bytes(), unsupported(), None).unwrap();
    }

    #[test]
    fn rfc7677_test_vector() {
        // RFC 7677 section 3 (user "user", password "pencil"); inject the server nonce via private state.
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let mut s = ScramServer::new(ScramVerifier::from_password(b"pencil", &salt, 4096), None);
        let first = s
            .handle_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
            .unwrap();
        assert!(first.starts_with(b"r=rOprNGfwEbeRWgbNEkqO"));
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        s.state = State::SentServerFirst(Pending {
            gs2_header: "n,,".into(),
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
            server_first: format!("r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            nonce: nonce.into(),
        });
        let fin = format!("c=biws,r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        let out = s.handle_client_final(fin.as_bytes()).unwrap();
        assert_eq!(out, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn wrong_password_is_invalid_proof() {
        let v = postgres_protocol::password::scram_sha_256(b"secret");
        assert_err!(exchange(&v, b"wrong", unsupported(), None), InvalidProof);
    }

    #[test]
    fn dummy_verifier_is_invalid_proof() {
        let d = ScramVerifier::dummy("nobody");
        assert_eq!(d.salt, ScramVerifier::dummy("nobody").salt);
        assert_ne!(d.salt, ScramVerifier::dummy("other").salt);
        for pw in [&b""[..], b"secret", b"nobody"] {
            assert_err!(
                exchange(&d.to_string(), pw, unsupported(), None),
                InvalidProof
            );
        }
    }

    #[test]
    fn tampered_nonce_is_rejected_and_ends_exchange() {
        let (mut server, client) = started(&ScramVerifier::dummy("u"));
        let fin = String::from_utf8(client.message().to_vec()).unwrap();
        let tampered = fin.replacen(",r=", ",r=X", 1);
        assert_err!(
            server.handle_client_final(tampered.as_bytes()),
            NonceMismatch
        );
        assert_err!(server.handle_client_final(fin.as_bytes()), OutOfOrder);
    }

    #[test]
    fn out_of_order_calls() {
        let mut s = ScramServer::new(ScramVerifier::dummy("u"), None);
        assert_err!(s.handle_client_final(b"c=biws,r=a,p=AAAA"), OutOfOrder);
        let mut s = ScramServer::new(ScramVerifier::dummy("u"), None);
        s.handle_client_first(b"n,,n=,r=abc").unwrap();
        assert_err!(s.handle_client_first(b"n,,n=,r=abc"), OutOfOrder);
    }

    #[test]
    fn malformed_inputs_error_without_panicking() {
        let v = ScramVerifier::parse(&ScramVerifier::hash_password("secret")).unwrap();
        let huge = vec![b'a'; 4096];
        let bad = "|garbage|n,|n,,|n,,n=|n,,n=,r=|n,,r=abc|x,,n=,r=abc|n,a=bob,n=,r=abc\
            |n,,m=ext,n=,r=abc|n,,n=,r=a b|n,,n=,r=abc,1|p=tls-server-end-point,,n=,r=abc";
        let mut firsts: Vec<Vec<u8>> = bad.split('|').map(|m| m.as_bytes().to_vec()).collect();
        firsts.extend([b"\xff\xfe,,n=,r=abc".to_vec(), huge.clone()]);
        for m in firsts {
            let r = ScramServer::new(v.clone(), None).handle_client_first(&m);
            assert!(r.is_err(), "{:?}", String::from_utf8_lossy(&m));
        }
        let mut s = ScramServer::new(v.clone(), None);
        assert_err!(
            s.handle_client_first(b"p=tls-server-end-point,,n=,r=abc"),
            UnsupportedChannelBinding
        );

        // Every truncation of a valid client-final, plus hand-made bad ones, must fail cleanly.
        let fin = started(&v).1.message().to_vec();
        let mut finals: Vec<Vec<u8>> = (0..fin.len()).map(|i| fin[..i].to_vec()).collect();
        let bad = "c=!!!!|c=biws,r=x,p=@@@|c=biws,r=x,p=AAAA|p=AAAA|c=eSws,r=x,p=AAAA|,";
        finals.extend(bad.split('|').map(|m| m.as_bytes().to_vec()));
        finals.extend([b"\xff".to_vec(), huge]);
        let start = b"n,,n=,r=abcdef";
        for m in finals {
            let mut s = ScramServer::new(v.clone(), None);
            s.handle_client_first(start).unwrap();
            let r = s.handle_client_final(&m);
            assert!(r.is_err(), "{:?}", String::from_utf8_lossy(&m));
        }
        // Truncations of a real client-first never panic.
        let start = ScramSha256::new(b"secret", unsupported())
            .message()
            .to_vec();
        for i in 0..start.len() {
            let _ = ScramServer::new(v.clone(), None).handle_client_first(&start[..i]);
        }
    }

    #[test]
    fn plus_channel_binding() {
        let v = ScramVerifier::hash_password("secret");
        let tls = || ChannelBinding::tls_server_end_point(vec![1, 2, 3]);
        exchange(&v, b"secret", tls(), Some(vec![1, 2, 3])).unwrap();
        let r = exchange(&v, b"secret", tls(), Some(vec![9, 9, 9]));
        assert_err!(r, ChannelBindingMismatch);
        // PLUS server refuses a client that does not bind; plain server refuses a binding client.
        let r = exchange(&v, b"secret", unsupported(), Some(vec![1, 2, 3]));
        assert_err!(r, ChannelBindingMismatch);
        assert_err!(
            exchange(&v, b"secret", tls(), None),
            UnsupportedChannelBinding
        );
    }

    #[test]
    fn verifier_parse_rejects_malformed_and_debug_hides_keys() {
        let good = ScramVerifier::hash_password("secret");
        let bad = "|md5abc|SCRAM-SHA-256$|SCRAM-SHA-256$4096:c2FsdA==|SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA\
            |SCRAM-SHA-256$-1:c2FsdA==$AAAA:AAAA|SCRAM-SHA-256$abc:c2FsdA==$AAAA:AAAA\
            |SCRAM-SHA-256$4096:$AAAA:AAAA|SCRAM-SHA-256$4096:!!$AAAA:AAAA\
            |SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA|SCRAM-SHA-256$99999999999:c2FsdA==$AAAA:AAAA";
        for s in bad.split('|').chain([good.replacen('$', "$x", 1).as_str()]) {
            assert_err!(ScramVerifier::parse(s), InvalidVerifier(_));
        }
        let v = ScramVerifier::parse(&good).unwrap();
        let dbg = format!("{v:?}");
        assert_eq!(dbg, "ScramVerifier { iterations: 4096, .. }");
        let sdbg = format!("{:?}", ScramServer::new(v.clone(), Some(vec![7])));
        let secrets = [v.stored_key.to_vec(), v.server_key.to_vec(), v.salt.clone()];
        for secret in secrets.iter().map(|k| STANDARD.encode(k)) {
            assert!(!dbg.contains(&secret) && !sdbg.contains(&secret));
        }
    }
}
