//! `[live]`: the live jobs' configuration.
//!
//! ```toml
//! [live.engine]
//! checkpoint_interval_ms = 1000   # state, offsets and Delta output, together
//! max_out_of_orderness_ms = 500   # clickstream partitions
//! idle_timeout_ms = 5000          # a silent clickstream partition stops holding time
//! allowed_lateness_ms = 2000      # later than this behind the watermark: the late path
//!
//! [live.fraud]
//! rules = "fraud.toml"            # reloaded while running; built-in rules when absent
//! webhook = "https://…"           # optional; never logged beyond its host
//! webhook_attempts = 6
//! profile_refresh_ms = 30000      # how often gold.customer_risk_profile is checked for a new version
//!
//! [live.activity]
//! window_ms = 300000              # gold.product_activity_5m's window
//! ```

use std::path::PathBuf;

use serde::Deserialize;

use crate::runtime::RuntimeConfig;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveConfig {
    #[serde(default)]
    pub engine: RuntimeConfig,
    #[serde(default)]
    pub fraud: FraudConfig,
    #[serde(default)]
    pub activity: ActivityConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivityConfig {
    /// The window of `gold.product_activity_5m`: five minutes; tests make
    /// it shorter so that windows close within a test.
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
}

fn default_window_ms() -> u64 {
    300_000
}

impl Default for ActivityConfig {
    fn default() -> Self {
        ActivityConfig {
            window_ms: default_window_ms(),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FraudConfig {
    /// The rules file; the built-in rules when absent.
    #[serde(default)]
    pub rules: Option<PathBuf>,
    /// An endpoint that receives every alert (may carry a token: never
    /// shown whole).
    #[serde(default)]
    pub webhook: Option<String>,
    #[serde(default = "default_attempts")]
    pub webhook_attempts: u32,
    /// How often the detector looks for a new version of
    /// `gold.customer_risk_profile`.
    #[serde(default = "default_profile_refresh_ms")]
    pub profile_refresh_ms: u64,
}

fn default_profile_refresh_ms() -> u64 {
    30_000
}

fn default_attempts() -> u32 {
    6
}

impl Default for FraudConfig {
    fn default() -> Self {
        FraudConfig {
            rules: None,
            webhook: None,
            webhook_attempts: default_attempts(),
            profile_refresh_ms: default_profile_refresh_ms(),
        }
    }
}

impl std::fmt::Debug for FraudConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FraudConfig")
            .field("rules", &self.rules)
            .field("webhook", &self.webhook.as_ref().map(|_| "<set>"))
            .field("webhook_attempts", &self.webhook_attempts)
            .field("profile_refresh_ms", &self.profile_refresh_ms)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_never_shows_in_debug() {
        let c: LiveConfig = toml::from_str(
            "[engine]\ncheckpoint_interval_ms = 250\n[fraud]\nwebhook = \"https://h/x?token=s3cret\"\n",
        )
        .unwrap();
        assert_eq!(c.engine.checkpoint_interval_ms, 250);
        assert!(!format!("{c:?}").contains("s3cret"));
        let err = toml::from_str::<LiveConfig>("[fraud]\nwebhok = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("webhok"), "{err}");
    }
}
