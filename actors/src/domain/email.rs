//! E-mail addresses: one account per person (ToS 2.4). An address is kept
//! as given (trimmed, lower-cased) for display, and compared by its
//! canonical form: lower-cased, without plus-addressing (`ann+x@` is
//! `ann@`), and without dots in the local part at providers that ignore
//! them (`a.nn@gmail.com` is `ann@gmail.com`), so one mailbox is one
//! account however it is spelled.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email {
    address: String,
    canonical: String,
}

/// How addresses are canonicalised; configurable because which providers
/// ignore dots is a fact about the world that changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailRules {
    /// Domains (lower case) whose mailboxes ignore dots in the local part.
    pub dotless_domains: Vec<String>,
}

impl Default for EmailRules {
    fn default() -> Self {
        EmailRules {
            dotless_domains: vec!["gmail.com".into(), "googlemail.com".into()],
        }
    }
}

impl std::str::FromStr for EmailRules {
    type Err = String;

    /// `gmail.com, googlemail.com` (comma-separated, any case); empty: none.
    fn from_str(list: &str) -> Result<EmailRules, String> {
        let mut dotless_domains = Vec::new();
        for domain in list.split(',').map(|d| d.trim().to_lowercase()) {
            if domain.is_empty() {
                continue;
            }
            // A domain is compared with the part of an address after `@`:
            // one with other characters would never match, silently.
            if !domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '.' || c == '-')
            {
                return Err(format!(
                    "{domain:?}: expected mail domains like gmail.com, separated by commas"
                ));
            }
            dotless_domains.push(domain);
        }
        Ok(EmailRules { dotless_domains })
    }
}

impl EmailRules {
    fn canonical(&self, local: &str, domain: &str) -> String {
        // `+tag` is a sub-address of the same mailbox; a local part that
        // is all tag (`+x@`) is left as it is.
        let base = match local.split_once('+') {
            Some((base, _)) if !base.is_empty() => base,
            _ => local,
        };
        let base = if self.dotless_domains.iter().any(|d| d == domain) {
            base.replace('.', "")
        } else {
            base.to_owned()
        };
        format!("{base}@{domain}")
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid e-mail address: {0}")]
pub struct EmailError(&'static str);

impl Email {
    /// Parses with the default [`EmailRules`].
    pub fn parse(raw: &str) -> Result<Email, EmailError> {
        Email::parse_with(raw, &EmailRules::default())
    }

    pub fn parse_with(raw: &str, rules: &EmailRules) -> Result<Email, EmailError> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err(EmailError("empty"));
        }
        // Counted as sent, as a client checking it would.
        if email.len() > 254 || raw.chars().count() > 254 {
            return Err(EmailError("longer than 254 characters"));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(EmailError("contains whitespace"));
        }
        let (local, domain) = email.rsplit_once('@').ok_or(EmailError("no '@'"))?;
        if local.is_empty() || local.len() > 64 || local.contains('@') {
            return Err(EmailError("bad local part"));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(EmailError("bad dots in local part"));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 {
            return Err(EmailError("domain needs a dot"));
        }
        for label in labels {
            let ok = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-');
            if !ok {
                return Err(EmailError("bad domain"));
            }
        }
        let canonical = rules.canonical(local, domain);
        Ok(Email {
            address: email,
            canonical,
        })
    }

    /// The address as given, for display and mail.
    pub fn as_str(&self) -> &str {
        &self.address
    }

    /// The form uniqueness is decided on.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// For adapters that load an address the store already validated.
    pub fn from_stored(address: String, canonical: String) -> Email {
        Email { address, canonical }
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.address)
    }
}

impl Serialize for Email {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.address)
    }
}

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Email, D::Error> {
        let raw = String::deserialize(d)?;
        Email::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_trimmed_and_lower_cased() {
        assert_eq!(
            Email::parse("  Ann@Example.COM ").unwrap().as_str(),
            "ann@example.com"
        );
    }

    #[test]
    fn canonical_form_drops_tags_case_and_ignored_dots() {
        let rules = EmailRules::default();
        for (given, canonical) in [
            ("Name+1@Example.com", "name@example.com"),
            ("name+a+b@example.com", "name@example.com"),
            ("first.last@example.com", "first.last@example.com"),
            ("First.Last+news@GMail.com", "firstlast@gmail.com"),
            ("f.i.r.s.t@googlemail.com", "first@googlemail.com"),
            ("+only@example.com", "+only@example.com"),
        ] {
            let email = Email::parse_with(given, &rules).unwrap();
            assert_eq!(email.canonical(), canonical, "{given}");
            assert_eq!(
                email.as_str(),
                given.trim().to_lowercase(),
                "kept for display"
            );
        }
        let custom: EmailRules = " Example.com ,, ".parse().unwrap();
        assert_eq!(custom.dotless_domains, ["example.com"]);
        for bad in [
            "jdoe@gmail.com",
            "gmail.com googlemail.com",
            "gmail.com;x.org",
        ] {
            assert!(bad.parse::<EmailRules>().is_err(), "{bad} accepted");
        }
        assert_eq!(
            Email::parse_with("a.b@example.com", &custom)
                .unwrap()
                .canonical(),
            "ab@example.com"
        );
        assert_eq!(
            Email::parse_with("a.b@gmail.com", &custom)
                .unwrap()
                .canonical(),
            "a.b@gmail.com",
            "only the configured providers"
        );
        let json = serde_json::to_string(&Email::parse("A+x@b.co").unwrap()).unwrap();
        assert_eq!(json, "\"a+x@b.co\"");
        let back: Email = serde_json::from_str(&json).unwrap();
        assert_eq!(back.canonical(), "a@b.co");
    }

    #[test]
    fn malformed_emails_are_rejected() {
        for bad in [
            "",
            " ",
            "ann",
            "ann@",
            "@example.com",
            "ann@example",
            "ann@@example.com",
            "a nn@example.com",
            "ann@-example.com",
            "ann@example..com",
            ".ann@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(65))).is_err());
    }
}
