//! iSCSI URLs as libiscsi writes them: `iscsi://host[:port]/target-iqn/lun`, or `iscsi://host[:port]` for
//! discovery. IPv6 hosts go in brackets (`iscsi://[::1]:3260/...`); the port defaults to 3260 (RFC 7143 13.x,
//! the well-known port).
//!
//! CHAP credentials are given as libiscsi takes them: `iscsi://user%secret@host/...`, or `iscsi://user@host/...`
//! with the secret in `LUNLOCK_CHAP_SECRET` (or libiscsi's `LIBISCSI_CHAP_PASSWORD`), so that it stays out of `ps`.
//! Mutual CHAP adds the target's credentials: `?target_user=NAME&target_password=SECRET`, or `target_user` with
//! the secret in `LUNLOCK_CHAP_TARGET_SECRET` (or `LIBISCSI_CHAP_TARGET_PASSWORD`).

use crate::chap::ChapCredentials;
use lunlock_iscsi::chap::Credentials;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

pub const DEFAULT_PORT: u16 = 3260;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IscsiUrl {
    pub host: String,
    pub port: u16,
    /// None for a discovery URL.
    pub target: Option<String>,
    pub lun: Option<u64>,
    /// CHAP credentials from the URL and the environment; None logs in without authentication.
    pub chap: Option<ChapCredentials>,
}

/// Environment variables that may hold our CHAP secret, in the order they are consulted.
pub const SECRET_VARIABLES: [&str; 2] = ["LUNLOCK_CHAP_SECRET", "LIBISCSI_CHAP_PASSWORD"];
/// Environment variables that may hold the target's CHAP secret, for mutual CHAP.
pub const TARGET_SECRET_VARIABLES: [&str; 2] = [
    "LUNLOCK_CHAP_TARGET_SECRET",
    "LIBISCSI_CHAP_TARGET_PASSWORD",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for UrlError {}

impl IscsiUrl {
    /// Parses a URL, taking secrets not in it from the process environment.
    pub fn parse(text: &str) -> Result<IscsiUrl, UrlError> {
        IscsiUrl::parse_with_env(text, |name| std::env::var(name).ok())
    }

    /// Parses a URL, with `env` standing for the environment. Errors never repeat the URL's secrets.
    pub fn parse_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<IscsiUrl, UrlError> {
        let shown = redacted(text);
        let bad = |why: &str| {
            UrlError(format!(
                "bad iSCSI URL {shown:?}: {why} (expected iscsi://[user[%secret]@]host[:port]/target-iqn/lun)"
            ))
        };
        let rest = text
            .strip_prefix("iscsi://")
            .ok_or_else(|| bad("it must start with iscsi://"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (userinfo, rest) = match rest.find('/').map_or(rest, |i| &rest[..i]).rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let chap = credentials(userinfo, query, &env).map_err(|why| bad(&why))?;
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let close = bracketed
                .find(']')
                .ok_or_else(|| bad("unclosed '[' in the host"))?;
            let host = &bracketed[..close];
            let after = &bracketed[close + 1..];
            let port = match after.strip_prefix(':') {
                Some(port) => port.parse().map_err(|_| bad("the port is not a number"))?,
                None if after.is_empty() => DEFAULT_PORT,
                None => return Err(bad("unexpected text after the host")),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (
                    host.to_string(),
                    port.parse().map_err(|_| bad("the port is not a number"))?,
                ),
                None => (authority.to_string(), DEFAULT_PORT),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let path = path.trim_end_matches('/');
        if path.is_empty() {
            return Ok(IscsiUrl {
                host,
                port,
                target: None,
                lun: None,
                chap,
            });
        }
        let (target, lun) = path
            .rsplit_once('/')
            .ok_or_else(|| bad("missing the LUN after the target name"))?;
        if target.is_empty() {
            return Err(bad("empty target name"));
        }
        let lun = lun.parse().map_err(|_| bad("the LUN is not a number"))?;
        Ok(IscsiUrl {
            host,
            port,
            target: Some(target.to_string()),
            lun: Some(lun),
            chap,
        })
    }

    /// The portal address (resolving a host name).
    pub fn address(&self) -> Result<SocketAddr, UrlError> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| UrlError(format!("cannot resolve {}: {e}", self.host)))?
            .next()
            .ok_or_else(|| UrlError(format!("{} has no address", self.host)))
    }

    /// Target and LUN, or an error saying the URL is a discovery URL.
    pub fn device(&self) -> Result<(&str, u64), UrlError> {
        match (&self.target, self.lun) {
            (Some(target), Some(lun)) => Ok((target, lun)),
            _ => Err(UrlError(format!(
                "iscsi://{}:{} names no device: use iscsi://host[:port]/target-iqn/lun",
                self.host, self.port
            ))),
        }
    }
}

/// The URL with the secrets in its user part and query replaced by `***`, for messages.
fn redacted(text: &str) -> String {
    let mut shown = text.to_string();
    if let Some(rest) = text.strip_prefix("iscsi://") {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some(percent) = rest[..at].find('%') {
                shown = format!("iscsi://{}%***{}", &rest[..percent], &rest[at..]);
            }
        }
    }
    match shown.split_once("target_password=") {
        Some((head, tail)) => {
            let end = tail.find('&').unwrap_or(tail.len());
            format!("{head}target_password=***{}", &tail[end..])
        }
        None => shown,
    }
}

fn first_set(env: &impl Fn(&str) -> Option<String>, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|name| env(name).filter(|v| !v.is_empty()))
}

/// CHAP credentials from `user[%secret]` and the `target_user`/`target_password` query keys.
fn credentials(
    userinfo: Option<&str>,
    query: Option<&str>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<ChapCredentials>, String> {
    let (mut target_user, mut target_secret) = (None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("target_user", value)) => target_user = Some(value.to_string()),
            Some(("target_password", value)) => target_secret = Some(value.to_string()),
            _ => return Err("the query may hold only target_user and target_password".into()),
        }
    }
    let Some(userinfo) = userinfo else {
        return match target_user.or(target_secret) {
            Some(_) => Err("mutual CHAP (target_user) needs our own user@ too".into()),
            None => Ok(None),
        };
    };
    let (user, secret) = match userinfo.split_once('%') {
        Some((user, secret)) => (user, Some(secret.to_string())),
        None => (userinfo, first_set(env, &SECRET_VARIABLES)),
    };
    if user.is_empty() {
        return Err("empty CHAP user before '@'".into());
    }
    let secret = secret.filter(|s| !s.is_empty()).ok_or_else(|| {
        format!(
            "no CHAP secret for {user:?}: write user%secret@ or set {}",
            SECRET_VARIABLES[0]
        )
    })?;
    let target = match target_user {
        Some(target_user) => {
            let secret = target_secret
                .or_else(|| first_set(env, &TARGET_SECRET_VARIABLES))
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    format!(
                        "no secret for target_user {target_user:?}: add target_password= or set {}",
                        TARGET_SECRET_VARIABLES[0]
                    )
                })?;
            Some(Credentials {
                user: target_user,
                secret: secret.into_bytes(),
            })
        }
        None if target_secret.is_some() => return Err("target_password without target_user".into()),
        None => None,
    };
    Ok(Some(ChapCredentials {
        initiator: Credentials {
            user: user.to_string(),
            secret: secret.into_bytes(),
        },
        target,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libiscsi_urls() {
        let url =
            IscsiUrl::parse("iscsi://127.0.0.1:3261/iqn.2026-11.io.lunlock:default/0").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("127.0.0.1", 3261));
        assert_eq!(url.device().unwrap(), ("iqn.2026-11.io.lunlock:default", 0));
        let v6 = IscsiUrl::parse("iscsi://[::1]/iqn.x:y/7").unwrap();
        assert_eq!((v6.host.as_str(), v6.port, v6.lun), ("::1", 3260, Some(7)));
        let discovery = IscsiUrl::parse("iscsi://host.example").unwrap();
        assert_eq!(discovery.target, None);
        assert!(discovery.device().is_err());
    }

    #[test]
    fn rejects_malformed_urls() {
        for bad in [
            "http://x/y/0",
            "iscsi://",
            "iscsi://h:port/t/0",
            "iscsi://h/t/notanumber",
            "iscsi://h/t",
            "iscsi://[::1/t/0",
            "iscsi://@h/t/0",
            "iscsi://h/t/0?target_user=array",
            "iscsi://u%s@h/t/0?color=blue",
        ] {
            assert!(IscsiUrl::parse_with_env(bad, |_| None).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_come_from_the_url_or_the_environment() {
        let url =
            IscsiUrl::parse_with_env("iscsi://host1%s3cret-s3cret@h:3261/iqn.x:t/2", |_| None)
                .unwrap();
        let chap = url.chap.unwrap();
        assert_eq!(chap.initiator.user, "host1");
        assert_eq!(chap.initiator.secret, b"s3cret-s3cret");
        assert_eq!((url.host.as_str(), url.port, url.lun), ("h", 3261, Some(2)));
        assert!(chap.target.is_none());

        let env = |name: &str| match name {
            "LUNLOCK_CHAP_SECRET" => Some("from-the-environment".to_string()),
            "LIBISCSI_CHAP_TARGET_PASSWORD" => Some("target-secret-1".to_string()),
            _ => None,
        };
        let url =
            IscsiUrl::parse_with_env("iscsi://host1@h/iqn.x:t/0?target_user=array", env).unwrap();
        let chap = url.chap.unwrap();
        assert_eq!(chap.initiator.secret, b"from-the-environment");
        let target = chap.target.unwrap();
        assert_eq!(
            (target.user.as_str(), &target.secret[..]),
            ("array", &b"target-secret-1"[..])
        );

        let missing = IscsiUrl::parse_with_env("iscsi://host1@h/iqn.x:t/0", |_| None).unwrap_err();
        assert!(missing.0.contains("LUNLOCK_CHAP_SECRET"), "{missing}");
    }

    #[test]
    fn errors_never_show_a_secret() {
        let err = IscsiUrl::parse_with_env(
            "iscsi://host1%hunter2-hunter2@h/t/x?target_user=a&target_password=swordfish-99",
            |_| None,
        )
        .unwrap_err();
        assert!(
            !err.0.contains("hunter2") && !err.0.contains("swordfish"),
            "{err}"
        );
        assert!(err.0.contains("host1%***@h"), "{err}");
    }
}
