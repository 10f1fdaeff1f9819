//! iSCSI URLs as libiscsi writes them: `iscsi://host[:port]/target-iqn/lun`, or `iscsi://host[:port]` for
//! discovery. IPv6 hosts go in brackets (`iscsi://[::1]:3260/...`); the port defaults to 3260 (RFC 7143 13.x,
//! the well-known port).

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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for UrlError {}

impl IscsiUrl {
    pub fn parse(text: &str) -> Result<IscsiUrl, UrlError> {
        let bad = |why: &str| {
            UrlError(format!(
                "bad iSCSI URL {text:?}: {why} (expected iscsi://host[:port]/target-iqn/lun)"
            ))
        };
        let rest = text
            .strip_prefix("iscsi://")
            .ok_or_else(|| bad("it must start with iscsi://"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
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
        ] {
            assert!(IscsiUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
