//! The key of the tenants' LISTEN/NOTIFY channel prefixes (`server.channel_key_file` or
//! `server.channel_key_env`): a secret, read at load, never in config.toml.

use super::{Config, ConfigError, ConfigProblem};

impl Config {
    /// Reads the channel key named by `server.channel_key_file`/`server.channel_key_env`,
    /// if either is set (at least [`crate::verified::MIN_KEY_LEN`] bytes).
    pub fn load_channel_key(&mut self) -> Result<(), ConfigError> {
        let s = &mut self.server;
        let problem = |key: &str, message: String| {
            ConfigError::Invalid(vec![ConfigProblem {
                key: key.into(),
                message,
            }])
        };
        let (bytes, key) = match (&s.channel_key_file, &s.channel_key_env) {
            (Some(path), _) => (
                std::fs::read(path).map_err(|e| {
                    problem(
                        "server.channel_key_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?,
                "server.channel_key_file",
            ),
            (None, Some(name)) => (
                std::env::var(name)
                    .map_err(|_| {
                        problem(
                            "server.channel_key_env",
                            format!("environment variable {name} is not set or not valid UTF-8"),
                        )
                    })?
                    .into_bytes(),
                "server.channel_key_env",
            ),
            (None, None) => return Ok(()),
        };
        if bytes.trim_ascii().len() < crate::verified::MIN_KEY_LEN {
            return Err(problem(
                key,
                format!(
                    "the key must be at least {} bytes (e.g. `openssl rand -hex 32`)",
                    crate::verified::MIN_KEY_LEN
                ),
            ));
        }
        s.channel_key = Some(std::sync::Arc::new(crate::verified::ContextKey::new(
            &bytes,
        )));
        Ok(())
    }
}
