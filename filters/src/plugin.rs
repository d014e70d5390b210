//! The plugin configuration: the policy JSON plus the adapter's own keys ([`sink::CONFIG_KEY`],
//! [`mode::CONFIG_KEY`], [`hybrid::CONFIG_KEY`]). It is read in one parse; the adapter keys are removed before
//! the policy is compiled, and a configuration without any of them reaches the policy parser byte for byte
//! (which reports its own errors).

use serde_json::Value;

use crate::hybrid::{self, ConfigError, Hybrid};
use crate::mode::{self, BodyMode, ModeError};
use crate::sink::{self, AuditSink, SinkError};

/// The plugin configuration, split into the policy bytes and the adapter's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// The policy document, without the adapter keys.
    pub policy: Vec<u8>,
    pub sink: AuditSink,
    pub body_mode: BodyMode,
    pub hybrid: Option<Hybrid>,
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
    Hybrid(ConfigError),
}

impl core::fmt::Display for PluginError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Json { detail } => write!(f, "plugin configuration is not JSON: {detail}"),
            Self::Sink(e) => e.fmt(f),
            Self::Mode(e) => e.fmt(f),
            Self::Hybrid(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for PluginError {}

impl PluginConfig {
    /// Splits the adapter keys off `config`; the keys are read in this order: `audit_sink`,
    /// `pause_at_headers`, `hybrid_jwt_authn` (the first bad one is reported).
    pub fn parse(config: &[u8]) -> Result<Self, PluginError> {
        let mut out = Self {
            policy: Vec::new(),
            sink: AuditSink::Log,
            body_mode: BodyMode::HoldBody,
            hybrid: None,
        };
        // Cheap test first: most configurations set none of the keys and are passed on byte for byte.
        let mentions = |key: &str| config.windows(key.len()).any(|w| w == key.as_bytes());
        if ![sink::CONFIG_KEY, mode::CONFIG_KEY, hybrid::CONFIG_KEY]
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
            if let Some(value) = object.remove(hybrid::CONFIG_KEY) {
                out.hybrid = Some(hybrid::from_value(value).map_err(PluginError::Hybrid)?);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    mod sink {
        use super::super::*;

        /// The configuration as the plugin reads it, reduced to this module's part.
        fn split_config(config: &[u8]) -> Result<(Vec<u8>, AuditSink), PluginError> {
            PluginConfig::parse(config).map(|c| (c.policy, c.sink))
        }

        #[test]
        fn absent_key_leaves_the_configuration_alone() {
            let config = br#"{"trust_domain": "t"}"#;
            assert_eq!(
                split_config(config).unwrap(),
                (config.to_vec(), AuditSink::Log)
            );
        }

        #[test]
        fn filter_state_is_split_off() {
            let (rest, sink) =
                split_config(br#"{"audit_sink": "filter_state", "trust_domain": "t"}"#).unwrap();
            assert_eq!(sink, AuditSink::FilterState);
            assert_eq!(rest, br#"{"trust_domain":"t"}"#.to_vec());
            let (_, sink) = split_config(br#"{"audit_sink": "log"}"#).unwrap();
            assert_eq!(sink, AuditSink::Log);
        }

        #[test]
        fn anything_else_is_refused() {
            for bad in [
                &br#"{"audit_sink": "none"}"#[..],
                br#"{"audit_sink": null}"#,
                br#"{"audit_sink": 1}"#,
                br#"{"audit_sink": "LOG"}"#,
                br#"{"audit_sink": "filter_state""#,
            ] {
                assert!(
                    split_config(bad).is_err(),
                    "{}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
    }

    mod mode {
        use super::super::*;

        /// The configuration as the plugin reads it, reduced to this module's part.
        fn split_config(config: &[u8]) -> Result<(Vec<u8>, BodyMode), PluginError> {
            PluginConfig::parse(config).map(|c| (c.policy, c.body_mode))
        }

        #[test]
        fn absent_key_holds_the_body_and_leaves_the_configuration_alone() {
            let config = br#"{"trust_domain": "t"}"#;
            assert_eq!(
                split_config(config).unwrap(),
                (config.to_vec(), BodyMode::HoldBody)
            );
        }

        #[test]
        fn the_key_is_split_off() {
            let (rest, mode) =
                split_config(br#"{"pause_at_headers": true, "trust_domain": "t"}"#).unwrap();
            assert_eq!(mode, BodyMode::PauseAtHeaders);
            assert_eq!(rest, br#"{"trust_domain":"t"}"#.to_vec());
            let (rest, mode) = split_config(br#"{"pause_at_headers": false}"#).unwrap();
            assert_eq!((rest, mode), (b"{}".to_vec(), BodyMode::HoldBody));
        }

        #[test]
        fn anything_but_a_boolean_is_refused() {
            for bad in [
                &br#"{"pause_at_headers": "true"}"#[..],
                br#"{"pause_at_headers": 1}"#,
                br#"{"pause_at_headers": null}"#,
                br#"{"pause_at_headers": true"#,
            ] {
                assert!(
                    split_config(bad).is_err(),
                    "{}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
    }

    mod hybrid {
        use super::super::*;

        fn split_config(config: &[u8]) -> Result<(Vec<u8>, Option<Hybrid>), PluginError> {
            PluginConfig::parse(config).map(|c| (c.policy, c.hybrid))
        }

        #[test]
        fn split_off_and_the_rest_kept() {
            let config =
                br#"{"hybrid_jwt_authn": {"payload_in_metadata": "txn_payload"}, "trust_domain": "t"}"#;
            let (policy, hybrid) = split_config(config).unwrap();
            assert_eq!(
                serde_json::from_slice::<Value>(&policy).unwrap(),
                serde_json::json!({"trust_domain": "t"})
            );
            assert_eq!(hybrid.unwrap().payload_key, "txn_payload");
        }

        #[test]
        fn configuration_without_the_key_passes_untouched_and_bad_ones_fail() {
            let (policy, hybrid) = split_config(br#"{"trust_domain":"t"}"#).unwrap();
            assert_eq!(policy, br#"{"trust_domain":"t"}"#);
            assert!(hybrid.is_none());
            assert!(split_config(br#"{"hybrid_jwt_authn": {}}"#).is_err());
            assert!(split_config(br#"{"hybrid_jwt_authn": {"payload_in_metadata": ""}}"#).is_err());
            assert!(
                split_config(br#"{"hybrid_jwt_authn": {"payload_in_metadata": "p", "x": 1}}"#)
                    .is_err()
            );
            assert!(split_config(br#"{"hybrid_jwt_authn": true}"#).is_err());
        }
    }
}
