//! `openshell serve`'s settings: `$XDG_CONFIG_HOME/openshell/config.toml` (else
//! `~/.config/openshell/config.toml`). Missing file: the defaults, which are
//! OpenClaw's (prune sandboxes idle for 24 h or older than 7 days, hourly). Unknown
//! keys and bad durations are refused with the file's name, so a typo never silently
//! keeps the defaults.
//!
//! ```toml
//! [prune]
//! enabled = true
//! idle = "24h"      # not used for this long (s, m, h, d)
//! max_age = "7d"    # created this long ago
//! every = "1h"      # how often serve looks
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The idle prune.
    #[serde(default)]
    pub prune: Prune,
}

/// `[prune]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Prune {
    /// Whether serve prunes at all.
    pub enabled: bool,
    /// `sandbox prune --idle`.
    pub idle: String,
    /// `sandbox prune --max-age`.
    pub max_age: String,
    /// How often (parsed into a duration).
    #[serde(deserialize_with = "duration")]
    pub every: Duration,
}

impl Default for Prune {
    fn default() -> Self {
        Self {
            enabled: true,
            idle: "24h".into(),
            max_age: "7d".into(),
            every: Duration::from_secs(3600),
        }
    }
}

/// Seconds in `N[s|m|h|d]` (the parser of `sandbox prune`).
pub fn parse_duration(s: &str) -> Result<u64, String> {
    super::sandbox::duration("duration", s)
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    match parse_duration(&s) {
        Ok(0) => Err(serde::de::Error::custom("every must be more than 0")),
        Ok(n) => Ok(Duration::from_secs(n)),
        Err(e) => Err(serde::de::Error::custom(e)),
    }
}

/// Where the file is.
pub fn path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    base.join("openshell").join("config.toml")
}

impl Config {
    /// Read the file (the defaults when there is none).
    pub fn load() -> Result<Self, String> {
        let p = path();
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("read {}: {e}", p.display())),
        };
        let c: Self = toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        for (k, v) in [("idle", &c.prune.idle), ("max_age", &c.prune.max_age)] {
            parse_duration(v).map_err(|e| format!("{}: prune.{k}: {e}", p.display()))?;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_typos() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c.prune.idle, "24h");
        assert!(c.prune.enabled);
        let c: Config = toml::from_str("[prune]\nidle = \"2h\"\nevery = \"10m\"\n").unwrap();
        assert_eq!(
            (c.prune.idle.as_str(), c.prune.every.as_secs()),
            ("2h", 600)
        );
        let e = toml::from_str::<Config>("[prune]\nidel = \"2h\"\n").unwrap_err();
        assert!(e.to_string().contains("idel"), "{e}");
        assert!(toml::from_str::<Config>("[prune]\nevery = \"0s\"\n").is_err());
        assert!(toml::from_str::<Config>("[prune]\nevery = \"5x\"\n").is_err());
        assert_eq!(parse_duration("7d"), Ok(604800));
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
