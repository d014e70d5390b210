//! The plugin configuration: the policy JSON plus the adapter's own keys ([`sink::CONFIG_KEY`],
//! [`mode::CONFIG_KEY`], [`host_verified::CONFIG_KEY`] or its first spelling). It is read in one parse; the adapter keys are removed before
//! the policy is compiled, and a configuration without any of them reaches the policy parser byte for byte
//! (which reports its own errors).

use serde_json::Value;

use crate::host_verified::{self, ConfigError, JwtAuthn};
use crate::mode::{self, BodyMode, ModeError};
use crate::sink::{self, AuditSink, SinkError};

/// The plugin configuration, split into the policy bytes and the adapter's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// The policy document, without the adapter keys.
    pub policy: Vec<u8>,
    pub sink: AuditSink,
    pub body_mode: BodyMode,
    /// Host-verified mode: where jwt_authn publishes the payload it verified.
    pub host_verified: Option<JwtAuthn>,
}

/// Why the plugin configuration was refused (the policy itself is checked by the core).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PluginError {
    /// An adapter key is present and the configuration is not JSON.
    Json {
        detail: String,
    },
    Sink(SinkError),
    Mode(ModeError),
    HostVerified(ConfigError),
}

impl core::fmt::Display for PluginError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Json { detail } => write!(f, "plugin configuration is not JSON: {detail}"),
            Self::Sink(e) => e.fmt(f),
            Self::Mode(e) => e.fmt(f),
            Self::HostVerified(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for PluginError {}

impl PluginConfig {
    /// Splits the adapter keys off `config`; the keys are read in this order: `audit_sink`,
    /// `pause_at_headers`, `host_verified_jwt_authn` / `hybrid_jwt_authn` (the first bad one is reported).
    pub fn parse(config: &[u8]) -> Result<Self, PluginError> {
        let mut out = Self {
            policy: Vec::new(),
            sink: AuditSink::Log,
            body_mode: BodyMode::HoldBody,
            host_verified: None,
        };
        // Cheap test first: most configurations set none of the keys and are passed on byte for byte.
        let mentions = |key: &str| config.windows(key.len()).any(|w| w == key.as_bytes());
        if ![
            sink::CONFIG_KEY,
            mode::CONFIG_KEY,
            host_verified::CONFIG_KEY,
            host_verified::LEGACY_CONFIG_KEY,
        ]
        .into_iter()
        .any(mentions)
        {
            out.policy = config.to_vec();
            return Ok(out);
        }
        let mut doc: Value = serde_json::from_slice(config).map_err(|e| PluginError::Json {
            detail: e.to_string(),
        })?;
        let mut removed = false;
        if let Some(object) = doc.as_object_mut() {
            if let Some(value) = object.remove(sink::CONFIG_KEY) {
                out.sink = sink::from_value(value).map_err(PluginError::Sink)?;
                removed = true;
            }
            if let Some(value) = object.remove(mode::CONFIG_KEY) {
                out.body_mode = mode::from_value(value).map_err(PluginError::Mode)?;
                removed = true;
            }
            let current = object.remove(host_verified::CONFIG_KEY);
            let legacy = object.remove(host_verified::LEGACY_CONFIG_KEY);
            let section = match (current, legacy) {
                (Some(_), Some(_)) => return Err(PluginError::HostVerified(ConfigError::Twice)),
                (Some(value), None) => Some((host_verified::CONFIG_KEY, value)),
                (None, Some(value)) => Some((host_verified::LEGACY_CONFIG_KEY, value)),
                (None, None) => None,
            };
            if let Some((key, value)) = section {
                let jwt_authn =
                    host_verified::from_value(key, value).map_err(PluginError::HostVerified)?;
                out.host_verified = Some(jwt_authn);
                removed = true;
            }
        }
        out.policy = if removed {
            doc.to_string().into_bytes()
        } else {
            config.to_vec()
        };
        Ok(out)
    }
}
