//! Account names: JID normalization (stringprep via the `jid` crate, phone numbers to E.164)
//! and the account operations behind `strait user …`.

use crate::config::Config;
use crate::sasl;
use strait_store::{Store, StoreError};

/// Why an account name or operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{0:?} is not a valid account JID (expected localpart@domain): {1}")]
    InvalidJid(String, String),
    #[error("{0} is not a domain this server serves (configured: {1})")]
    UnknownDomain(String, String),
    #[error("the password is empty")]
    EmptyPassword,
    #[error("password: {0}")]
    Password(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Files(String),
}

/// If `local` looks like a phone number (a leading `+` or `00`, then digits with the usual
/// separators: spaces, dots, dashes, parentheses), returns its E.164 form `+<digits>`.
/// E.164 numbers have at most 15 digits; we ask for at least 6 so that short ordinary
/// names such as `+1` stay as they are.
pub fn phone_to_e164(local: &str) -> Option<String> {
    let t = local.trim();
    let rest = t.strip_prefix('+').or_else(|| t.strip_prefix("00"))?;
    if !rest
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '.' | '-' | '(' | ')'))
    {
        return None;
    }
    let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
    if !(6..=15).contains(&digits.len()) || digits.starts_with('0') {
        return None;
    }
    Some(format!("+{digits}"))
}

/// Normalizes a localpart: phone numbers to E.164, everything else by nodeprep.
pub fn normalize_localpart(local: &str) -> Result<String, String> {
    let local = phone_to_e164(local).unwrap_or_else(|| local.to_owned());
    let jid = jid::BareJid::new(&format!("{local}@x.invalid")).map_err(|e| e.to_string())?;
    Ok(jid
        .node()
        .map(|n| n.as_str().to_owned())
        .unwrap_or_default())
}

/// Parses and normalizes a JID (bare or full), applying the phone-number rule to the
/// localpart. Returns the normalized string form.
pub fn normalize_jid(input: &str) -> Result<jid::Jid, String> {
    let (head, resource) = match input.find('/') {
        Some(i) => (&input[..i], Some(&input[i..])),
        None => (input, None),
    };
    let rewritten = match head.rfind('@') {
        Some(at) => match phone_to_e164(&head[..at]) {
            Some(e164) => format!("{e164}@{}{}", &head[at + 1..], resource.unwrap_or("")),
            None => input.to_owned(),
        },
        None => input.to_owned(),
    };
    jid::Jid::new(&rewritten).map_err(|e| e.to_string())
}

/// Parses an account JID given by an operator: `localpart@domain`, normalized, on a served domain.
pub fn account_jid(config: &Config, input: &str) -> Result<String, AccountError> {
    let jid = normalize_jid(input.trim()).map_err(|e| AccountError::InvalidJid(input.into(), e))?;
    let Some(node) = jid.node() else {
        return Err(AccountError::InvalidJid(
            input.into(),
            "no localpart".into(),
        ));
    };
    if jid.resource().is_some() {
        return Err(AccountError::InvalidJid(
            input.into(),
            "an account JID has no resource".into(),
        ));
    }
    let domain = config.served_domain(jid.domain().as_str()).ok_or_else(|| {
        AccountError::UnknownDomain(jid.domain().as_str().into(), config.domains.join(", "))
    })?;
    Ok(format!("{}@{}", node.as_str(), domain))
}

fn credentials(config: &Config, password: &str) -> Result<strait_store::Credentials, AccountError> {
    if password.is_empty() {
        return Err(AccountError::EmptyPassword);
    }
    sasl::derive_credentials(password, config.auth.scram_iterations)
        .map_err(|e| AccountError::Password(e.to_string()))
}

/// Creates an account; only salted SCRAM credentials are stored.
pub fn add_user(
    config: &Config,
    store: &dyn Store,
    jid: &str,
    password: &str,
) -> Result<String, AccountError> {
    let jid = account_jid(config, jid)?;
    store.create_account(&jid, &credentials(config, password)?)?;
    Ok(jid)
}

/// Replaces an account's credentials.
pub fn set_password(
    config: &Config,
    store: &dyn Store,
    jid: &str,
    password: &str,
) -> Result<String, AccountError> {
    let jid = account_jid(config, jid)?;
    store.set_credentials(&jid, &credentials(config, password)?)?;
    Ok(jid)
}

/// Removes an account with its roster, offline messages and archive, then the files it
/// uploaded (XEP-0363); the account's JID and how many files went.
pub fn remove_user(
    config: &Config,
    store: &dyn Store,
    jid: &str,
) -> Result<(String, usize), AccountError> {
    let jid = match account_jid(config, jid) {
        Err(AccountError::UnknownDomain(domain, served)) => {
            // A provider's enlisted user (docs/interop.md) lives here too.
            let provider_domain = store
                .providers()?
                .iter()
                .any(|p| p.domains.contains(&domain));
            if !provider_domain {
                return Err(AccountError::UnknownDomain(domain, served));
            }
            let normalized =
                normalize_jid(jid.trim()).map_err(|e| AccountError::InvalidJid(jid.into(), e))?;
            normalized.to_bare().to_string()
        }
        other => other?,
    };
    store.remove_account(&jid)?;
    let files =
        crate::features::upload::remove_owner_files(&config.data_dir, &jid).map_err(|e| {
            AccountError::Files(format!(
                "the account is removed, but not all of its uploaded files: {e}"
            ))
        })?;
    Ok((jid, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_become_e164() {
        assert_eq!(
            phone_to_e164("+31 6 1234 5678").as_deref(),
            Some("+31612345678")
        );
        assert_eq!(
            phone_to_e164("0031-6-1234-5678").as_deref(),
            Some("+31612345678")
        );
        assert_eq!(
            phone_to_e164("+1 (555) 010-9999").as_deref(),
            Some("+15550109999")
        );
        assert_eq!(phone_to_e164("alice"), None);
        assert_eq!(phone_to_e164("+12"), None);
        assert_eq!(
            phone_to_e164("+1234567890123456"),
            None,
            "16 digits is not E.164"
        );
        assert_eq!(
            phone_to_e164("0612345678"),
            None,
            "no country code: left alone"
        );
    }

    #[test]
    fn account_jids_are_normalized_and_checked() {
        let c = Config {
            domains: vec!["example.test".into()],
            ..Config::default()
        };
        assert_eq!(
            account_jid(&c, "Alice@Example.Test").unwrap(),
            "alice@example.test"
        );
        assert_eq!(
            account_jid(&c, "+31 6 1234 5678@example.test").unwrap(),
            "+31612345678@example.test"
        );
        assert!(matches!(
            account_jid(&c, "bob@other.test"),
            Err(AccountError::UnknownDomain(..))
        ));
        assert!(matches!(
            account_jid(&c, "example.test"),
            Err(AccountError::InvalidJid(..))
        ));
        assert!(matches!(
            account_jid(&c, "a@example.test/r"),
            Err(AccountError::InvalidJid(..))
        ));
        assert!(matches!(
            account_jid(&c, "a b@example.test"),
            Err(AccountError::InvalidJid(..))
        ));
    }

    #[test]
    fn full_jids_keep_their_resource() {
        let j = normalize_jid("+44 20 7946 0000@x.test/Phone 1").unwrap();
        assert_eq!(j.to_string(), "+442079460000@x.test/Phone 1");
    }
}
