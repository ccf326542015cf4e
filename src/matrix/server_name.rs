//! Matrix server names (`hostname [":" port]`, spec appendix "Server Name") and user ids.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The port of the server-server API when a server name gives none.
pub const DEFAULT_FEDERATION_PORT: u16 = 8448;

/// A parsed Matrix server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerName {
    host: Host,
    port: Option<u16>,
}

/// The host part of a server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name.
    Name(String),
    /// An IPv4 literal.
    V4(Ipv4Addr),
    /// An IPv6 literal (written in brackets).
    V6(Ipv6Addr),
}

/// Why a text is not a server name; the message says what is wrong, for configuration errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct InvalidServerName {
    /// What is wrong.
    pub reason: String,
}

fn invalid(reason: impl Into<String>) -> InvalidServerName {
    InvalidServerName {
        reason: reason.into(),
    }
}

impl ServerName {
    /// Parses a server name by the spec's grammar. DNS names are ASCII letters, digits and
    /// `-` in dot-separated labels; a name that URL parsers would read as an IPv4 number
    /// (`2130706433`, `0x7f.1`) is refused, since it would dodge the address checks.
    pub fn parse(text: &str) -> Result<Self, InvalidServerName> {
        if text.is_empty() || text.len() > 255 {
            return Err(invalid("expected `host[:port]`, 1 to 255 characters"));
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| invalid("unclosed `[` in an IPv6 literal"))?;
            let ip = Ipv6Addr::from_str(inside)
                .map_err(|_| invalid(format!("`{inside}` is not an IPv6 address")))?;
            if !(after.is_empty() || after.starts_with(':')) {
                return Err(invalid("unexpected text after `]`"));
            }
            (Host::V6(ip), after)
        } else {
            let (host, after) = match text.find(':') {
                Some(i) => text.split_at(i),
                None => (text, ""),
            };
            let host = match Ipv4Addr::from_str(host) {
                Ok(ip) => Host::V4(ip),
                Err(_) if host.is_empty() => return Err(invalid("the host part is empty")),
                Err(_) if is_dns_name(host) => Host::Name(host.to_owned()),
                Err(_) => {
                    return Err(invalid(format!(
                        "`{host}` is not a host name (letters, digits, `-` and `.` only)"
                    )));
                }
            };
            (host, after)
        };
        let port = match port {
            "" => None,
            p => {
                let digits = p.strip_prefix(':').unwrap_or(p);
                let valid = !digits.is_empty()
                    && digits.len() <= 5
                    && digits.bytes().all(|b| b.is_ascii_digit());
                match digits.parse::<u16>() {
                    Ok(port) if valid && port != 0 => Some(port),
                    _ => return Err(invalid(format!("`{digits}` is not a port number"))),
                }
            }
        };
        Ok(Self { host, port })
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The explicit port, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The host as written in a URL (`[…]` around IPv6).
    pub fn host_text(&self) -> String {
        match &self.host {
            Host::Name(name) => name.clone(),
            Host::V4(ip) => ip.to_string(),
            Host::V6(ip) => format!("[{ip}]"),
        }
    }

    /// `host[:port]`, normalised.
    pub fn authority(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host_text()),
            None => self.host_text(),
        }
    }

    /// True for an IP literal (no `.well-known` lookup for those).
    pub fn is_ip_literal(&self) -> bool {
        !matches!(self.host, Host::Name(_))
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority())
    }
}

/// A DNS name by the spec's grammar, refusing what URL parsers would read as an IPv4
/// number (`2130706433`, `0x7f.1`), which would dodge the name checks.
fn is_dns_name(host: &str) -> bool {
    if host.is_empty() || host.len() > 255 {
        return false;
    }
    let labels: Vec<&str> = host.split('.').collect();
    let labels_ok = labels.iter().all(|l| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    let looks_numeric = labels.last().is_some_and(|last| {
        last.bytes().all(|b| b.is_ascii_digit())
            || last.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("0x"))
                && last[2..].bytes().all(|b| b.is_ascii_hexdigit())
    });
    labels_ok && !looks_numeric
}

/// Checks a `host[:port]` server name; the error says what is wrong.
pub fn validate_server_name(name: &str) -> Result<(), String> {
    ServerName::parse(name).map(|_| ()).map_err(|e| e.reason)
}

/// The server part of a Matrix user ID (`@alice:hs.example:8448` → `hs.example:8448`), if it
/// is one: a non-empty localpart and a valid server name.
pub fn user_id_server(user_id: &str) -> Option<&str> {
    let rest = user_id.strip_prefix('@')?;
    let (local, server) = rest.split_once(':')?;
    if local.is_empty() || user_id.len() > 255 || validate_server_name(server).is_err() {
        return None;
    }
    Some(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_follow_the_spec_grammar() {
        for (name, authority) in [
            ("matrix.org", "matrix.org"),
            ("matrix.org:8888", "matrix.org:8888"),
            ("1.2.3.4", "1.2.3.4"),
            ("1.2.3.4:1234", "1.2.3.4:1234"),
            ("[1234:5678::abcd]", "[1234:5678::abcd]"),
            ("[1234:5678::abcd]:5678", "[1234:5678::abcd]:5678"),
            ("localhost", "localhost"),
            ("localhost:8090", "localhost:8090"),
            ("[::1]:8448", "[::1]:8448"),
            ("a-b.c", "a-b.c"),
            ("agent-a.finances.gouv.fr", "agent-a.finances.gouv.fr"),
        ] {
            assert_eq!(ServerName::parse(name).unwrap().authority(), authority);
            assert!(validate_server_name(name).is_ok(), "{name}");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "a@b",
            "a?b",
            "a#b",
            "a:",
            "a:0",
            "x:99999",
            "a:65536",
            "a:80:80",
            "a:x",
            "a:+80",
            "::1",
            ":80",
            "[::1",
            "[nope]",
            "[zz]",
            "[::1]x",
            ".a",
            "a..b",
            "a.",
            "é.example",
            "2130706433",
            "0x7f000001",
            "a.0x7f",
            "1.2.3.4.5",
            "256.1.1.1",
        ] {
            assert!(ServerName::parse(bad).is_err(), "{bad:?}");
            assert!(validate_server_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let reason = |s: &str| validate_server_name(s).unwrap_err();
        assert!(reason("a b").contains("not a host name"));
        assert!(reason("x:0").contains("not a port number"));
        assert!(reason("[::1").contains("unclosed"));
        assert!(reason("[zz]").contains("not an IPv6 address"));
    }

    #[test]
    fn user_id_servers() {
        assert_eq!(user_id_server("@alice:hs.example"), Some("hs.example"));
        assert_eq!(
            user_id_server("@a:hs.example:8448"),
            Some("hs.example:8448")
        );
        assert_eq!(user_id_server("@a:[::1]:8448"), Some("[::1]:8448"));
        for bad in [
            "alice:hs",
            "@:hs.example",
            "@alice",
            "@a:",
            "@a:b c",
            "!r:hs.example",
        ] {
            assert_eq!(user_id_server(bad), None, "{bad}");
        }
        let long = format!("@{}:hs.example", "a".repeat(260));
        assert_eq!(user_id_server(&long), None);
    }
}
