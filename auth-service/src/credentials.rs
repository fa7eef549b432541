//! Email addresses, passwords and client addresses, parsed at the edge into types that
//! cannot hold a bad value: past `Email::parse` and `Password::parse` no raw string
//! reaches SQL or bcrypt, and a `ClientAddress` is always an IP address or `unknown`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::error::AuthError;

/// bcrypt only reads the first 72 bytes of a password; longer ones are refused rather
/// than silently truncated (two passwords sharing 72 bytes would otherwise be equal).
pub const MAX_PASSWORD_BYTES: usize = 72;
pub const MIN_PASSWORD_BYTES: usize = 8;
/// RFC 5321 limits a forward path to 256 octets, so an address to 254.
const MAX_EMAIL_BYTES: usize = 254;
const MAX_LOCAL_PART_BYTES: usize = 64;

/// A normalised email address: trimmed, lower-cased as a whole, plausibly deliverable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, AuthError> {
        let email = raw.trim().to_lowercase();
        let invalid = |why: &str| AuthError::InvalidArgument(format!("email {why}"));
        if email.is_empty() {
            return Err(invalid("is required"));
        }
        if email.len() > MAX_EMAIL_BYTES {
            return Err(invalid("is longer than 254 bytes"));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("must not contain spaces or control characters"));
        }
        let Some((local, domain)) = email.rsplit_once('@') else {
            return Err(invalid("must look like name@example.com"));
        };
        if local.is_empty() || local.contains('@') || local.len() > MAX_LOCAL_PART_BYTES {
            return Err(invalid("must look like name@example.com"));
        }
        let labels_ok = domain.contains('.')
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            });
        if !labels_ok {
            return Err(invalid(
                "has an invalid domain; it must look like name@example.com",
            ));
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password within bcrypt's limits. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: String) -> Result<Self, AuthError> {
        let length = raw.len();
        if length < MIN_PASSWORD_BYTES {
            return Err(AuthError::InvalidArgument(format!(
                "password must be at least {MIN_PASSWORD_BYTES} bytes long"
            )));
        }
        if length > MAX_PASSWORD_BYTES {
            return Err(AuthError::InvalidArgument(format!(
                "password must be at most {MAX_PASSWORD_BYTES} bytes (bcrypt's limit; it was {length} bytes)"
            )));
        }
        Ok(Self(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Where a call comes from: the key of its failed-login throttle. Always an IP address in
/// canonical text (an IPv4-mapped IPv6 address is its IPv4 address), or `unknown`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddress(String);

impl ClientAddress {
    /// The address the gateway reported (`forwarded`, the client-address header), when it
    /// is one; else the socket's `peer` (a direct caller); else `unknown`, one key shared
    /// by every call that carries neither.
    pub fn from_call(forwarded: Option<&str>, peer: Option<IpAddr>) -> Self {
        match forwarded.and_then(parse_ip).or(peer) {
            Some(ip) => Self(ip.to_canonical().to_string()),
            None => Self("unknown".to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An IP address, with or without a port (`203.0.113.7`, `[2001:db8::1]:443`).
fn parse_ip(raw: &str) -> Option<IpAddr> {
    let raw = raw.trim();
    raw.parse::<IpAddr>()
        .ok()
        .or_else(|| raw.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_address_prefers_the_gateways_header_then_the_peer() {
        let peer = Some(IpAddr::from([10, 0, 0, 1]));
        let from = |header| ClientAddress::from_call(header, peer).as_str().to_owned();
        assert_eq!(from(Some("203.0.113.7")), "203.0.113.7");
        assert_eq!(from(Some(" 203.0.113.7:5123 ")), "203.0.113.7");
        assert_eq!(from(Some("[2001:db8::1]:443")), "2001:db8::1");
        assert_eq!(from(Some("::ffff:203.0.113.7")), "203.0.113.7");
        // Not an address: the header is ignored rather than trusted as a free-form key.
        assert_eq!(from(Some("anything; DROP TABLE")), "10.0.0.1");
        assert_eq!(from(None), "10.0.0.1");
        assert_eq!(ClientAddress::from_call(None, None).as_str(), "unknown");
    }

    #[test]
    fn email_is_trimmed_and_lowercased_as_a_whole() {
        let email = Email::parse("  Alice.Smith@Example.COM \n").unwrap();
        assert_eq!(email.as_str(), "alice.smith@example.com");
    }

    #[test]
    fn malformed_emails_are_refused() {
        for raw in [
            "",
            "   ",
            "alice",
            "alice@",
            "@example.com",
            "alice@example",
            "a b@example.com",
            "alice@exa mple.com",
            "alice@-example.com",
            "alice@example..com",
            "alice@@example.com",
        ] {
            assert!(Email::parse(raw).is_err(), "{raw:?} was accepted");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(Email::parse(&long_local).is_err());
    }

    #[test]
    fn password_length_is_bounded_in_bytes() {
        assert!(Password::parse("short".into()).is_err());
        assert!(Password::parse("12345678".into()).is_ok());
        assert!(Password::parse("x".repeat(72)).is_ok());
        let err = Password::parse("x".repeat(73)).unwrap_err();
        assert!(err.to_string().contains("at most 72 bytes"));
        // 24 three-byte characters are 72 bytes; 25 are 75.
        assert!(Password::parse("€".repeat(24)).is_ok());
        assert!(Password::parse("€".repeat(25)).is_err());
    }

    #[test]
    fn password_debug_is_redacted() {
        let password = Password::parse("hunter2hunter2".into()).unwrap();
        assert!(!format!("{password:?}").contains("hunter2"));
    }
}
