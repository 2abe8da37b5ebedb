//! The key of the tenants' LISTEN/NOTIFY channel prefixes (`server.channel_key_file` or
//! `server.channel_key_env`): a secret, read at load, never in config.toml.

use super::{Config, ConfigError};
use crate::verified::ContextKey;

impl Config {
    /// Reads the channel key named by `server.channel_key_file`/`server.channel_key_env`,
    /// if either is set (at least [`crate::verified::MIN_KEY_LEN`] bytes).
    pub fn load_channel_key(&mut self) -> Result<(), ConfigError> {
        let s = &mut self.server;
        if s.channel_key_file.is_none() && s.channel_key_env.is_none() {
            return Ok(());
        }
        let names = ("server.channel_key_file", "server.channel_key_env");
        let key = ContextKey::load(
            s.channel_key_file.as_ref(),
            s.channel_key_env.as_deref(),
            names,
        )?;
        s.channel_key = Some(std::sync::Arc::new(key));
        Ok(())
    }
}
