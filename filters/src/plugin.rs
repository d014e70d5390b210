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
    /// The `"log"` sink's per-field filter-state values (`access_log_fields`, default true).
    pub access_log_fields: bool,
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
    /// `access_log_fields`, `pause_at_headers`, `host_verified_jwt_authn` / `hybrid_jwt_authn` (the first bad one is reported).
    pub fn parse(config: &[u8]) -> Result<Self, PluginError> {
        let mut out = Self {
            policy: Vec::new(),
            sink: AuditSink::Log,
            access_log_fields: true,
            body_mode: BodyMode::HoldBody,
            host_verified: None,
        };
        // Cheap test first: most configurations set none of the keys and are passed on byte for byte.
        let mentions = |key: &str| config.windows(key.len()).any(|w| w == key.as_bytes());
        if ![
            sink::CONFIG_KEY,
            sink::FIELDS_KEY,
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
            if let Some(value) = object.remove(sink::FIELDS_KEY) {
                out.access_log_fields =
                    sink::fields_from_value(value).map_err(PluginError::Sink)?;
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

#[cfg(test)]
mod tests {
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
        fn access_log_fields_are_on_unless_turned_off() {
            let config = PluginConfig::parse(br#"{"trust_domain": "t"}"#).unwrap();
            assert!(config.access_log_fields);
            let config =
                PluginConfig::parse(br#"{"access_log_fields": false, "trust_domain": "t"}"#)
                    .unwrap();
            assert!(!config.access_log_fields);
            assert_eq!(config.policy, br#"{"trust_domain":"t"}"#.to_vec());
            let config = PluginConfig::parse(br#"{"access_log_fields": true}"#).unwrap();
            assert!(config.access_log_fields);
            for bad in [
                &br#"{"access_log_fields": "false"}"#[..],
                br#"{"access_log_fields": 0}"#,
                br#"{"access_log_fields": null}"#,
            ] {
                assert!(
                    PluginConfig::parse(bad).is_err(),
                    "{}",
                    String::from_utf8_lossy(bad)
                );
            }
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

    mod host_verified {
        use super::super::*;

        fn split_config(config: &[u8]) -> Result<(Vec<u8>, Option<JwtAuthn>), PluginError> {
            PluginConfig::parse(config).map(|c| (c.policy, c.host_verified))
        }

        #[test]
        fn split_off_and_the_rest_kept() {
            let config = br#"{"host_verified_jwt_authn": {"payload_in_metadata": "txn_payload"}, "trust_domain": "t"}"#;
            let (policy, jwt_authn) = split_config(config).unwrap();
            assert_eq!(
                serde_json::from_slice::<Value>(&policy).unwrap(),
                serde_json::json!({"trust_domain": "t"})
            );
            assert_eq!(jwt_authn.unwrap().payload_key, "txn_payload");
        }

        #[test]
        fn the_first_spelling_is_accepted_and_both_are_refused() {
            let legacy = br#"{"hybrid_jwt_authn": {"payload_in_metadata": "txn_payload"}, "trust_domain": "t"}"#;
            let (policy, jwt_authn) = split_config(legacy).unwrap();
            assert_eq!(policy, br#"{"trust_domain":"t"}"#.to_vec());
            assert_eq!(jwt_authn.unwrap().payload_key, "txn_payload");
            let both = br#"{"hybrid_jwt_authn": {"payload_in_metadata": "a"}, "host_verified_jwt_authn": {"payload_in_metadata": "a"}}"#;
            assert!(split_config(both).is_err());
            // A mistake is reported under the spelling the configuration used.
            let bad = split_config(br#"{"hybrid_jwt_authn": {}}"#).unwrap_err();
            assert!(bad.to_string().starts_with("hybrid_jwt_authn."), "{bad}");
        }

        #[test]
        fn configuration_without_the_key_passes_untouched_and_bad_ones_fail() {
            let (policy, jwt_authn) = split_config(br#"{"trust_domain":"t"}"#).unwrap();
            assert_eq!(policy, br#"{"trust_domain":"t"}"#);
            assert!(jwt_authn.is_none());
            for key in ["host_verified_jwt_authn", "hybrid_jwt_authn"] {
                for value in [
                    "{}",
                    r#"{"payload_in_metadata": ""}"#,
                    r#"{"payload_in_metadata": "p", "x": 1}"#,
                    "true",
                ] {
                    let config = format!(r#"{{"{key}": {value}}}"#);
                    assert!(split_config(config.as_bytes()).is_err(), "{config}");
                }
            }
        }
    }
}
