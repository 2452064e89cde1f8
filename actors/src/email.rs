//! E-mail addresses: one account per address (ToS 2.4), compared after
//! trimming and lower-casing, so `A@B.c ` and `a@b.c` are the same account.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid e-mail address: {0}")]
pub struct EmailError(&'static str);

impl Email {
    pub fn parse(raw: &str) -> Result<Email, EmailError> {
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
        Ok(Email(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For adapters that load an address the store already validated.
    pub fn from_stored(stored: String) -> Email {
        Email(stored)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.0)
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
