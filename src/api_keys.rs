//! The configured API keys: `KEY:TENANT:RIGHT` entries parsed into grants,
//! and a presented key's grant found in constant time. The HTTP layer
//! (`http::auth`) applies them; configuration only parses them.
//!
//! Only the SHA-256 of each key is kept; a presented key is hashed and
//! compared with every configured hash in constant time, so neither the
//! comparison nor which entry matched shows in the answer's timing. Keys must
//! be long and random (at least [`MIN_KEY_LEN`] characters): a plain hash is
//! enough for such keys, where a password would need a slow one.

use sha2::{Digest, Sha256};
use stockflow_dataflows::model::Name;
use subtle::ConstantTimeEq;

/// Shortest key accepted: 16 characters of a random token (e.g. `openssl rand -hex 16` gives 32).
pub const MIN_KEY_LEN: usize = 16;

/// What a key may do; each right includes the ones before it.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[strum(serialize_all = "lowercase")]
pub enum Right {
    /// Reads, listings, change streams, KPIs, exports.
    Read,
    /// Also commands (`POST`/`PATCH`/`DELETE` on items, stock and orders).
    Write,
    /// Also webhooks (register, list, delete, deliveries).
    Admin,
}

impl Right {
    pub(crate) fn parse(text: &str) -> Option<Right> {
        text.parse().ok()
    }

    pub(crate) fn name(self) -> &'static str {
        self.into()
    }
}

/// What one configured key grants. Handlers find it in the request's
/// extensions when auth is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The one tenant the key may name; `None`: any (an admin key, `*`).
    pub tenant: Option<Name>,
    /// The key's right.
    pub right: Right,
    /// The first 8 hex digits of the key's SHA-256: names the key (its rate
    /// limit's bucket, 429 answers and their log lines) without showing it.
    pub key_id: String,
}

impl Grant {
    /// Checks that the key may name `tenant`; otherwise why not (a 403's detail).
    pub fn allows_tenant(&self, tenant: &str) -> Result<(), String> {
        match &self.tenant {
            Some(own) if own.as_str() != tenant => Err(format!(
                "this API key is scoped to tenant `{own}`; it cannot name tenant `{tenant}` (leave `tenant` out, or give `{own}`)"
            )),
            _ => Ok(()),
        }
    }
}

/// The configured keys, hashed.
pub struct ApiKeys {
    entries: Vec<([u8; 32], Grant)>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the hashes: a log of the settings shows how many keys, not which.
        write!(f, "ApiKeys({} keys)", self.entries.len())
    }
}

impl ApiKeys {
    /// Parses `KEY:TENANT:RIGHT` entries; every bad entry is reported, by
    /// position and never by its key.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<ApiKeys, Vec<String>> {
        let mut keys = ApiKeys {
            entries: Vec::new(),
        };
        let mut errors = Vec::new();
        for (index, entry) in entries
            .into_iter()
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let at = index + 1;
            let parts: Vec<&str> = entry.rsplitn(3, ':').collect();
            let [right, tenant, key] = parts[..] else {
                errors.push(format!("api_keys: entry {at} is not KEY:TENANT:RIGHT"));
                continue;
            };
            if key.len() < MIN_KEY_LEN {
                errors.push(format!(
                    "api_keys: entry {at}: the key has {} characters; use a random one of at least {MIN_KEY_LEN} (e.g. `openssl rand -hex 16`)",
                    key.len()
                ));
            }
            if let Some(bad) = key.chars().find(|c| !c.is_ascii_graphic() || *c == ',') {
                errors.push(format!(
                    "api_keys: entry {at}: the key holds `{}`; keys are visible ASCII without `,`",
                    bad.escape_default()
                ));
            }
            let tenant = match tenant {
                "*" => None,
                name => match stockflow_dataflows::model::decode::validate_name(name) {
                    Ok(()) => Some(Name::from(name)),
                    Err(reason) => {
                        errors.push(format!("api_keys: entry {at}: tenant `{name}`: {reason} (or `*` for every tenant)"));
                        None
                    }
                },
            };
            let Some(right) = Right::parse(right) else {
                errors.push(format!(
                    "api_keys: entry {at}: right `{right}` is not read, write or admin"
                ));
                continue;
            };
            let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            if keys.entries.iter().any(|(known, _)| *known == hash) {
                errors.push(format!(
                    "api_keys: entry {at} repeats the key of an earlier entry"
                ));
            }
            let key_id = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
            keys.entries.push((
                hash,
                Grant {
                    tenant,
                    right,
                    key_id,
                },
            ));
        }
        if keys.entries.is_empty() && errors.is_empty() {
            errors.push("api_keys: no key given (KEY:TENANT:RIGHT, comma separated)".into());
        }
        if errors.is_empty() {
            Ok(keys)
        } else {
            Err(errors)
        }
    }

    /// The grant of `key`, if configured. Every entry is compared, in
    /// constant time, whatever matches.
    pub fn find(&self, key: &str) -> Option<&Grant> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for (known, grant) in &self.entries {
            if bool::from(known.ct_eq(&hash)) {
                found = Some(grant);
            }
        }
        found
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never true once parsed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_hash_and_match() {
        let keys = ApiKeys::parse([
            "0123456789abcdef0123:acme:write",
            " ffffffffffffffff:*:admin ",
        ])
        .unwrap();
        assert_eq!(keys.len(), 2);
        let acme = keys.find("0123456789abcdef0123").unwrap();
        assert_eq!(
            (acme.tenant.as_deref(), acme.right),
            (Some("acme"), Right::Write)
        );
        assert_eq!(keys.find("ffffffffffffffff").unwrap().tenant, None);
        assert!(keys.find("0123456789abcdef012").is_none());
        assert!(keys.find("").is_none());
        // A key may hold `:`; the last two fields are tenant and right.
        let colon = ApiKeys::parse(["abc:defghijklmnopqrs:acme:read"]).unwrap();
        assert_eq!(
            colon.find("abc:defghijklmnopqrs").unwrap().right,
            Right::Read
        );
        assert!(!format!("{keys:?}").contains("0123"));
    }

    #[test]
    fn bad_keys_are_refused_by_position_without_showing_them() {
        let errors = ApiKeys::parse([
            "short:acme:read",
            "0123456789abcdef:bad tenant:read",
            "0123456789abcdef:acme:owner",
            "nocolons",
            "0123456789abcdef:x:read",
        ])
        .unwrap_err();
        let all = errors.join("\n");
        assert!(all.contains("entry 1: the key has 5 characters"), "{all}");
        assert!(all.contains("entry 2: tenant `bad tenant`"), "{all}");
        assert!(
            all.contains("entry 3: right `owner` is not read, write or admin"),
            "{all}"
        );
        assert!(all.contains("entry 4 is not KEY:TENANT:RIGHT"), "{all}");
        assert!(all.contains("entry 5 repeats the key"), "{all}");
        assert!(!all.contains("0123456789abcdef"), "{all}");
        assert_eq!(
            ApiKeys::parse([" ", ""]).unwrap_err(),
            vec!["api_keys: no key given (KEY:TENANT:RIGHT, comma separated)".to_owned()]
        );
    }
}
