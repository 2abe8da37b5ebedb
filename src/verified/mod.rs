//! Verified tenant context: a context PostgreSQL itself checks, so a value set by client SQL
//! is refused even if the SQL guard misses the statement that set it.
//!
//! pgtenant holds a secret key; `pgtenant db install` stores the key's HMAC-SHA256 inner and
//! outer padded blocks in a table only a NOLOGIN owner role can read, a secret *slot* number
//! in a sequence only that role can read, and three `SECURITY DEFINER` functions:
//! `<schema>.enter(...)` checks a per-backend proof (HMAC(key, pid ‖ values), see [`proof`])
//! and then sets every context setting, plus a transaction-local copy under setting names
//! that carry the slot number (custom settings are never listed, so client SQL cannot find
//! them); the readers `<schema>.tenant_id()` and `<schema>.setting(name)` return that copy and
//! raise when the visible setting differs from it. The SQL side is in [`sql`], the install
//! command in [`install`].

pub mod install;
pub mod sql;

use std::path::PathBuf;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// SQLSTATE the SQL side raises for a refused proof or context (insufficient_privilege).
pub const REFUSED_SQLSTATE: &str = "42501";
/// Shortest key accepted (bytes): HMAC-SHA256 wants at least 32 bytes of key material.
pub const MIN_KEY_LEN: usize = 32;

/// The context key: the secret behind every proof. Its bytes never leave this type except
/// as the HMAC padded blocks `db install` stores; Debug shows the id only.
#[derive(Clone, PartialEq, Eq)]
pub struct ContextKey {
    secret: Vec<u8>,
    id: i32,
}

impl std::fmt::Debug for ContextKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContextKey {{ id: {}, secret: <redacted> }}", self.id)
    }
}

/// Why the key could not be read, naming the config key that points at it.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{key}: cannot read {path}: {source}")]
    File {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: environment variable {1} is not set or not valid UTF-8")]
    Env(&'static str, String),
    #[error("{0}: the key must be at least {MIN_KEY_LEN} bytes (e.g. `openssl rand -hex 32`)")]
    TooShort(&'static str),
}

/// The config keys that name a secret key's file and environment variable (for errors).
pub type KeyNames = (&'static str, &'static str);

/// The verified-context key's config keys.
pub const CONTEXT_KEY_NAMES: KeyNames = ("context.key_file", "context.key_env");

impl ContextKey {
    /// A key from its secret bytes (surrounding whitespace is not part of the key).
    pub fn new(secret: &[u8]) -> ContextKey {
        let secret = secret.trim_ascii().to_vec();
        let digest = Sha256::new()
            .chain_update(b"pgtenant key id\0")
            .chain_update(&secret)
            .finalize();
        // A positive int4: the id is a plain integer column and a function argument.
        let id = i32::from_be_bytes([digest[0] & 0x7f, digest[1], digest[2], digest[3]]);
        ContextKey { secret, id }
    }

    /// A fresh random key (the demo and tests; production keys come from a file or env).
    pub fn generate() -> ContextKey {
        let bytes: [u8; 32] = rand::random();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        ContextKey::new(hex.as_bytes())
    }

    /// Reads the key from `file` or else the environment variable `env`; errors name the
    /// config keys `names` (the file's, the variable's).
    pub fn load(
        file: Option<&PathBuf>,
        env: Option<&str>,
        names: KeyNames,
    ) -> Result<ContextKey, KeyError> {
        let (bytes, key) = if let Some(path) = file {
            let b = std::fs::read(path).map_err(|source| KeyError::File {
                key: names.0,
                path: path.display().to_string(),
                source,
            })?;
            (b, names.0)
        } else {
            let name = env.unwrap_or_default();
            let v = std::env::var(name).map_err(|_| KeyError::Env(names.1, name.to_string()))?;
            (v.into_bytes(), names.1)
        };
        if bytes.trim_ascii().len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort(key));
        }
        Ok(ContextKey::new(&bytes))
    }

    /// The key's public id (derived from the key; stored next to it, passed to `enter()`).
    pub fn id(&self) -> i32 {
        self.id
    }

    /// HMAC-SHA256 of `msg` under this key.
    pub fn hmac(&self, msg: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(msg);
        mac.finalize().into_bytes().into()
    }

    /// The HMAC inner and outer padded key blocks (`K ⊕ ipad`, `K ⊕ opad`), which the SQL
    /// side stores so that `sha256()` alone computes the same HMAC.
    pub fn padded_blocks(&self) -> (Vec<u8>, Vec<u8>) {
        let mut block = [0u8; 64];
        if self.secret.len() > 64 {
            block[..32].copy_from_slice(&Sha256::digest(&self.secret));
        } else {
            block[..self.secret.len()].copy_from_slice(&self.secret);
        }
        let inner = block.iter().map(|b| b ^ 0x36).collect();
        let outer = block.iter().map(|b| b ^ 0x5c).collect();
        (inner, outer)
    }
}

/// The message a proof covers, as `<schema>._proof_message` builds it: `P`, the backend pid,
/// then each value as a quoted literal (PostgreSQL's `quote_literal` form, which is
/// unambiguous), space-separated, as UTF-8. Text built by `format()` is cheaper for
/// PostgreSQL to rebuild on every transaction than a binary length-prefixed encoding.
pub fn proof_message(pid: i32, values: &[&[u8]]) -> Vec<u8> {
    let mut msg = format!("P {pid}").into_bytes();
    for v in values {
        msg.push(b' ');
        quote_literal(&mut msg, v);
    }
    msg
}

/// PostgreSQL's `quote_literal`: single quotes around, `'` and `\` doubled, and an `E`
/// prefix when the value holds a backslash.
fn quote_literal(out: &mut Vec<u8>, v: &[u8]) {
    if v.contains(&b'\\') {
        out.push(b'E');
    }
    out.push(b'\'');
    for &b in v {
        if b == b'\'' || b == b'\\' {
            out.push(b);
        }
        out.push(b);
    }
    out.push(b'\'');
}

/// The proof `enter()` accepts on the backend with this pid for these values, as lowercase
/// hex: HMAC(key, [`proof_message`]). Bound to one backend process, so a proof seen on one
/// backend is useless on another.
pub fn proof(key: &ContextKey, pid: i32, values: &[&[u8]]) -> String {
    hex(&key.hmac(&proof_message(pid, values)))
}

/// Lowercase hex, as PostgreSQL's `encode(..., 'hex')` writes it.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_blocks_reproduce_the_hmac() {
        for len in [32usize, 64, 100] {
            let key = ContextKey::new(&vec![b'k'; len]);
            let (inner, outer) = key.padded_blocks();
            let msg = b"some message";
            let inner_hash = Sha256::new()
                .chain_update(&inner)
                .chain_update(msg)
                .finalize();
            let outer_hash = Sha256::new()
                .chain_update(&outer)
                .chain_update(inner_hash)
                .finalize();
            assert_eq!(outer_hash.as_slice(), key.hmac(msg), "key length {len}");
        }
    }

    #[test]
    fn key_id_is_positive_and_debug_hides_the_secret() {
        let key = ContextKey::new(b"0123456789abcdef0123456789abcdef");
        assert!(key.id() > 0);
        assert!(!format!("{key:?}").contains("0123"));
        assert_eq!(key, ContextKey::new(b"0123456789abcdef0123456789abcdef\n"));
    }

    #[test]
    fn proof_message_quotes_like_postgresql() {
        assert_eq!(proof_message(42, &[b"t1", b"plan"]), b"P 42 't1' 'plan'");
        assert_eq!(proof_message(7, &[b"a'b", b""]), b"P 7 'a''b' ''");
        assert_eq!(proof_message(7, &[br"a\b'"]), br"P 7 E'a\\b'''".to_vec());
        // Values cannot run into each other: a value holding the separator stays one value.
        assert_ne!(
            proof_message(1, &[b"a' 'b", b"c"]),
            proof_message(1, &[b"a", b"b' 'c"])
        );
    }

    #[test]
    fn proof_depends_on_pid_and_every_value() {
        let key = ContextKey::generate();
        let p = proof(&key, 7, &[b"a", b"b"]);
        assert_eq!(p.len(), 64);
        assert_ne!(p, proof(&key, 8, &[b"a", b"b"]));
        assert_ne!(p, proof(&key, 7, &[b"a", b"c"]));
        assert_ne!(p, proof(&key, 7, &[b"ab", b""]));
    }
}
