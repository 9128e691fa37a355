//! The `postgres://` (or `postgresql://`) connection URL, as `heroku config:get DATABASE_URL`
//! prints it, split into its parts ([`ConnUrl`]): user, password, host (an IPv6 literal in
//! brackets), port, database, and the query parameters tap-heroku reads.
//!
//! Pure: no I/O; [`crate::config`] decides which parts win over the config's own keys. Errors
//! never repeat the URL, which holds a password.

use crate::error::{Error, ErrorKind, Result};

/// The parts of a `postgres://` URL.
#[derive(Default, Debug, PartialEq)]
pub struct ConnUrl {
    /// Host (brackets of an IPv6 literal removed).
    pub host: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// User name.
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Database name.
    pub dbname: Option<String>,
    /// `sslmode` query parameter.
    pub sslmode: Option<String>,
    /// `sslrootcert` query parameter.
    pub sslrootcert: Option<String>,
    /// `sslcert` query parameter.
    pub sslcert: Option<String>,
    /// `sslkey` query parameter.
    pub sslkey: Option<String>,
    /// `sslpassword` query parameter (a secret, like the password).
    pub sslpassword: Option<String>,
    /// `sslnegotiation` query parameter.
    pub sslnegotiation: Option<String>,
}

impl ConnUrl {
    /// Parses `postgres://` / `postgresql://` URLs. Errors never repeat the URL (it holds a password).
    pub fn parse(text: &str) -> Result<ConnUrl> {
        let bad = |what: &str| {
            Error::new(ErrorKind::Config, format!("the URL {what}")).with_hint(
                "Use the form postgres://user:password@host:5432/dbname?sslmode=require (what `heroku config:get DATABASE_URL` prints).",
            )
        };
        let rest = text
            .strip_prefix("postgres://")
            .or_else(|| text.strip_prefix("postgresql://"))
            .ok_or_else(|| bad("does not start with postgres:// or postgresql://"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (rest, None),
        };
        let mut url = ConnUrl::default();
        let hostport = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                let (user, password) = match userinfo.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (userinfo, None),
                };
                url.user = non_empty(percent_decode(user).ok_or_else(|| bad("has a malformed user name"))?);
                if let Some(p) = password {
                    url.password = Some(percent_decode(p).ok_or_else(|| bad("has a malformed password"))?);
                }
                hostport
            }
            None => authority,
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("has an unclosed [ in its host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        url.host = non_empty(percent_decode(host).ok_or_else(|| bad("has a malformed host"))?);
        if let Some(p) = port.filter(|p| !p.is_empty()) {
            url.port =
                Some(p.parse::<u16>().ok().filter(|&n| n > 0).ok_or_else(|| bad("has a port that is not a number from 1 to 65535"))?);
        }
        if let Some(path) = path {
            url.dbname = non_empty(percent_decode(path).ok_or_else(|| bad("has a malformed database name"))?);
        }
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).ok_or_else(|| bad("has a malformed query parameter"))?;
            match k {
                "sslmode" => url.sslmode = Some(v),
                "sslrootcert" => url.sslrootcert = Some(v),
                "sslcert" => url.sslcert = non_empty(v),
                "sslkey" => url.sslkey = non_empty(v),
                "sslpassword" => url.sslpassword = non_empty(v),
                "sslnegotiation" => url.sslnegotiation = non_empty(v),
                "user" => url.user = non_empty(v),
                "password" => url.password = Some(v),
                "dbname" => url.dbname = non_empty(v),
                "host" => url.host = non_empty(v),
                "port" => {
                    url.port = Some(
                        v.parse::<u16>().ok().filter(|&n| n > 0).ok_or_else(|| bad("has a port that is not a number from 1 to 65535"))?,
                    )
                }
                // A key with these characters is the tail of a password holding an unescaped `?`:
                // refuse the URL rather than log any of it.
                other if other.contains(['@', '/', ':', '#']) => {
                    return Err(bad("has a malformed query part (a password with ?, #, / or @ must be percent-encoded, e.g. ? as %3F)"));
                }
                // Not named: only the parameters above are read, the rest may hold anything.
                _ => log::warn!(
                    "a URL parameter other than sslmode, sslnegotiation, sslrootcert, sslcert, sslkey, sslpassword, user, password, dbname, host and port is ignored"
                ),
            }
        }
        Ok(url)
    }
}

/// `Some(s)` unless `s` is empty.
fn non_empty(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

/// Decodes `%XX` escapes (and nothing else); `None` when an escape is malformed or the result is
/// not UTF-8. `percent-encoding` passes a malformed escape through as text, so those are refused
/// first, as libpq refuses them ("invalid percent-encoded token").
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let escapes_well_formed = bytes
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'%')
        .all(|(i, _)| bytes.get(i + 1..i + 3).is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)));
    if !escapes_well_formed {
        return None;
    }
    percent_encoding::percent_decode_str(text).decode_utf8().ok().map(|decoded| decoded.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_percent_decoded() {
        let url = ConnUrl::parse("postgres://us%40r:p%3Ass@db.example.com:5433/my_db?sslmode=verify-full&sslpassword=a%26b%3Dc").unwrap();
        assert_eq!(url.user.as_deref(), Some("us@r"));
        assert_eq!(url.password.as_deref(), Some("p:ss"));
        assert_eq!(url.host.as_deref(), Some("db.example.com"));
        assert_eq!(url.port, Some(5433));
        assert_eq!(url.dbname.as_deref(), Some("my_db"));
        assert_eq!(url.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(url.sslpassword.as_deref(), Some("a&b=c"));
    }

    #[test]
    fn ipv6_hosts_empty_parts_and_query_overrides() {
        let url = ConnUrl::parse("postgresql://u@[::1]:6000/d").unwrap();
        assert_eq!((url.host.as_deref(), url.port, url.password), (Some("::1"), Some(6000), None));
        let url = ConnUrl::parse("postgres://h").unwrap();
        assert_eq!(url, ConnUrl { host: Some("h".into()), ..ConnUrl::default() });
        let url = ConnUrl::parse("postgres://u:@h/?host=other&port=7&dbname=d2&sslcert=").unwrap();
        assert_eq!((url.password.as_deref(), url.host.as_deref(), url.port), (Some(""), Some("other"), Some(7)));
        assert_eq!((url.dbname.as_deref(), url.sslcert), (Some("d2"), None));
    }

    #[test]
    fn malformed_urls_are_config_errors_without_the_url() {
        for text in [
            "mysql://u:hunter2@h/d",
            "postgres://u:hunter2@h:99999/d",
            "postgres://u:hunter2@h:0/d",
            "postgres://u:hunter2@[::1/d",
            "postgres://u:hunter2%zz@h/d",
            "postgres://u:hunter2%@h/d",
            "postgres://u:hunter2%ff@h/d",
            "postgres://u:hunter2%+f@h/d",
            "postgres://alice:12?hunter2@db.example.com/d1",
        ] {
            let err = ConnUrl::parse(text).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{text}");
            assert!(err.hint().is_some(), "{text}");
            assert!(!err.chain().contains("hunter2"), "{text}");
        }
    }
}
