//! Bearer API keys: every configured key is kept only as its SHA-256 digest, and a presented key
//! is checked against all of them in constant time.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use tokio_prompt_orchestrator::Priority;

use crate::cluster::Cluster;
use crate::config::AuthConfig;
use crate::gateway::limits::KeyLimits;

/// Who a request authenticated as: the key's configured name, or a short digest prefix. Never
/// the key itself, so it is safe in logs and as a session key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyId(pub Arc<str>);

struct Key {
    digest: [u8; 32],
    caller: Caller,
}

/// Who presented a valid key, whether the key may use the admin endpoints, and its rate limits.
#[derive(Clone)]
pub struct Caller {
    pub id: KeyId,
    pub admin: bool,
    pub limits: Option<Arc<KeyLimits>>,
    /// Priority of requests that send no `X-Priority`.
    pub priority: Priority,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("id", &self.id)
            .field("admin", &self.admin)
            .field("limited", &self.limits.is_some())
            .field("priority", &self.priority)
            .finish()
    }
}

/// The accepted keys.
pub struct ApiKeys {
    keys: Vec<Key>,
    /// Whether `/metrics` needs a key.
    pub protect_metrics: bool,
}

impl ApiKeys {
    /// The keys of `[auth]`, or `None` when none are configured (the API is open).
    ///
    /// The variables named by `key_env` are read here; the config's validation has already
    /// checked that they are set, so one that vanished since then is skipped with an error in
    /// the log (and with no usable key left, every request is refused: the API stays closed).
    /// A key's limits are carried over from `previous` (the running config's keys) when the key
    /// and its limits are the same, so a reload neither refills nor forgets them. (The cluster
    /// section cannot change in a reload.)
    pub fn from_config(
        config: &AuthConfig,
        cluster: Option<&Cluster>,
        previous: Option<&ApiKeys>,
    ) -> Option<Self> {
        let mut keys = Vec::with_capacity(config.keys.len());
        for (i, k) in config.keys.iter().enumerate() {
            let digest = if let Some(hex_digest) = &k.sha256 {
                let mut d = [0u8; 32];
                if hex::decode_to_slice(hex_digest, &mut d).is_err() {
                    tracing::error!(
                        index = i,
                        "auth.keys[{i}].sha256 is not 64 hex digits; key skipped"
                    );
                    continue;
                }
                d
            } else if let Some(var) = &k.key_env {
                match std::env::var(var) {
                    Ok(key) if !key.is_empty() => digest(&key),
                    _ => {
                        tracing::error!(variable = %var, "API key variable is not set; key skipped");
                        continue;
                    }
                }
            } else {
                continue;
            };
            let id = k
                .name
                .clone()
                .unwrap_or_else(|| format!("key-{}", hex::encode(&digest[..4])));
            let limits = k.rate_limit.or(config.rate_limit).and_then(|rate| {
                // The same key with the same limits keeps what it has used through a reload.
                let running = previous
                    .and_then(|p| p.keys.iter().find(|k| *k.caller.id.0 == *id))
                    .and_then(|k| k.caller.limits.clone())
                    .filter(|l| l.config == rate);
                if running.is_some() {
                    return running;
                }
                let limits = KeyLimits::new(rate)?;
                Some(Arc::new(match cluster {
                    Some(cluster) => limits.shared(cluster, &id),
                    None => limits,
                }))
            });
            keys.push(Key {
                digest,
                caller: Caller {
                    id: KeyId(id.into()),
                    admin: k.admin,
                    limits,
                    priority: k.priority.unwrap_or_default(),
                },
            });
        }
        (!config.keys.is_empty()).then_some(Self {
            keys,
            protect_metrics: config.protect_metrics,
        })
    }

    /// The key `presented` matches, if any. Compares against every key without stopping early,
    /// so the time taken does not reveal how much of a key was right.
    pub fn verify(&self, presented: &str) -> Option<Caller> {
        let presented = digest(presented);
        let mut found: Option<&Caller> = None;
        for key in &self.keys {
            let hit: Choice = key.digest.ct_eq(&presented);
            if bool::from(hit) {
                found = Some(&key.caller);
            }
        }
        found.cloned()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The bearer token of an `Authorization` header value, if it is one.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKeyConfig;
    use crate::gateway::limits::RateLimitConfig;

    fn keys() -> ApiKeys {
        // SAFETY: no other test reads or writes this variable.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("ORCHESTRATOR_TEST_AUTH_UNIT_KEY", "sk-plain")
        };
        let config = AuthConfig {
            keys: vec![
                ApiKeyConfig {
                    name: Some("plain".into()),
                    key_env: Some("ORCHESTRATOR_TEST_AUTH_UNIT_KEY".into()),
                    ..Default::default()
                },
                ApiKeyConfig {
                    sha256: Some(hex::encode(digest("sk-hashed"))),
                    admin: true,
                    ..Default::default()
                },
                ApiKeyConfig {
                    name: Some("unset".into()),
                    key_env: Some("ORCHESTRATOR_TEST_AUTH_UNIT_UNSET".into()),
                    ..Default::default()
                },
            ],
            protect_metrics: false,
            rate_limit: None,
        };
        ApiKeys::from_config(&config, None, None).unwrap()
    }

    #[test]
    fn keys_from_the_environment_and_hashed_keys_verify() {
        let keys = keys();
        assert_eq!(keys.keys.len(), 2, "the key whose variable is unset is skipped");
        let plain = keys.verify("sk-plain").unwrap();
        assert_eq!((plain.id, plain.admin), (KeyId("plain".into()), false));
        let hashed = keys.verify("sk-hashed").unwrap();
        assert!(hashed.admin);
        assert!(hashed.id.0.starts_with("key-"), "{hashed:?}");
        assert!(!hashed.id.0.contains("sk-hashed"));
        assert!(keys.verify("sk-plai").is_none());
        assert!(keys.verify("").is_none());
    }

    #[test]
    fn a_reload_keeps_a_keys_limits_unless_they_changed() {
        let config = |budget: u64| AuthConfig {
            keys: vec![ApiKeyConfig {
                name: Some("app".into()),
                sha256: Some(hex::encode(digest("sk-app"))),
                rate_limit: Some(RateLimitConfig {
                    token_budget: std::num::NonZeroU64::new(budget),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let budget = |keys: &ApiKeys| {
            keys.verify("sk-app")
                .unwrap()
                .limits
                .unwrap()
                .budget
                .clone()
                .unwrap()
        };
        let running = ApiKeys::from_config(&config(1000), None, None).unwrap();
        let reloaded = ApiKeys::from_config(&config(1000), None, Some(&running)).unwrap();
        assert!(
            Arc::ptr_eq(&budget(&running), &budget(&reloaded)),
            "the balance carries on"
        );
        let changed = ApiKeys::from_config(&config(2000), None, Some(&running)).unwrap();
        assert!(
            !Arc::ptr_eq(&budget(&running), &budget(&changed)),
            "a new budget starts full"
        );
    }

    #[test]
    fn no_keys_means_open() {
        assert!(ApiKeys::from_config(&AuthConfig::default(), None, None).is_none());
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("abc"), None);
    }
}
