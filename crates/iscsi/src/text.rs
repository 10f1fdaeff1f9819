//! Text key=value lists (RFC 7143 6.1): the data segment of Login and Text PDUs. Each pair is `key=value` followed
//! by a NUL byte. Keys are at most 63 bytes (RFC 7143 6.1); values at most 255 bytes unless the key says otherwise
//! (we accept up to 8192 for SendTargets answers and CHAP values).

use std::fmt;

/// Longest key RFC 7143 6.1 allows.
pub const MAX_KEY_LEN: usize = 63;
/// Longest value we accept (RFC 7143 6.1 allows 255 for most keys; CHAP binary values may be longer).
pub const MAX_VALUE_LEN: usize = 8192;

/// A malformed text segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextError {
    /// A pair without '='.
    MissingEquals {
        pair: String,
    },
    KeyTooLong {
        key: String,
    },
    ValueTooLong {
        key: String,
    },
    EmptyKey,
    /// Not UTF-8 (RFC 7143 6.1: text is UTF-8).
    NotUtf8,
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextError::MissingEquals { pair } => write!(f, "text pair without '=': {pair:?}"),
            TextError::KeyTooLong { key } => {
                write!(f, "text key longer than {MAX_KEY_LEN} bytes: {key:?}")
            }
            TextError::ValueTooLong { key } => {
                write!(f, "value of {key} longer than {MAX_VALUE_LEN} bytes")
            }
            TextError::EmptyKey => write!(f, "empty text key"),
            TextError::NotUtf8 => write!(f, "text segment is not UTF-8"),
        }
    }
}

impl std::error::Error for TextError {}

/// An ordered list of key=value pairs; order matters on the wire (SendTargets answers, negotiation order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextPairs(pub Vec<(String, String)>);

impl TextPairs {
    pub fn new() -> Self {
        TextPairs(Vec::new())
    }

    /// Parses a complete data segment. Trailing NULs and padding are tolerated; an empty segment is an empty list.
    pub fn parse(data: &[u8]) -> Result<TextPairs, TextError> {
        let mut pairs = Vec::new();
        for raw in data.split(|&b| b == 0).filter(|s| !s.is_empty()) {
            let pair = std::str::from_utf8(raw).map_err(|_| TextError::NotUtf8)?;
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| TextError::MissingEquals {
                    pair: pair.to_string(),
                })?;
            if key.is_empty() {
                return Err(TextError::EmptyKey);
            }
            if key.len() > MAX_KEY_LEN {
                return Err(TextError::KeyTooLong {
                    key: key.to_string(),
                });
            }
            if value.len() > MAX_VALUE_LEN {
                return Err(TextError::ValueTooLong {
                    key: key.to_string(),
                });
            }
            pairs.push((key.to_string(), value.to_string()));
        }
        Ok(TextPairs(pairs))
    }

    /// The value of the first pair with this key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.push((key.into(), value.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Wire form: every pair followed by NUL.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, value) in &self.0 {
            out.extend_from_slice(key.as_bytes());
            out.push(b'=');
            out.extend_from_slice(value.as_bytes());
            out.push(0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_encode_round_trip() {
        let mut pairs = TextPairs::new();
        pairs.push("InitiatorName", "iqn.2026-11.test:a");
        pairs.push("SessionType", "Normal");
        let bytes = pairs.encode();
        assert_eq!(TextPairs::parse(&bytes).unwrap(), pairs);
        assert_eq!(pairs.get("SessionType"), Some("Normal"));
        assert_eq!(pairs.get("Missing"), None);
    }

    #[test]
    fn malformed_pairs_are_errors() {
        assert!(matches!(
            TextPairs::parse(b"NoEquals\0"),
            Err(TextError::MissingEquals { .. })
        ));
        assert_eq!(TextPairs::parse(b"=x\0"), Err(TextError::EmptyKey));
        let long_key = format!("{}=1\0", "k".repeat(64));
        assert!(matches!(
            TextPairs::parse(long_key.as_bytes()),
            Err(TextError::KeyTooLong { .. })
        ));
        assert_eq!(
            TextPairs::parse(&[0xff, b'=', b'1', 0]),
            Err(TextError::NotUtf8)
        );
    }

    #[test]
    fn padding_nuls_are_ignored() {
        let pairs = TextPairs::parse(b"A=1\0\0\0\0").unwrap();
        assert_eq!(pairs.0, vec![("A".to_string(), "1".to_string())]);
    }
}
