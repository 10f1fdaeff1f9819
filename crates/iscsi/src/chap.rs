//! CHAP for iSCSI (RFC 7143 12.1.3, RFC 1994), sans-IO: the algorithms, the binary-value encoding of CHAP_C and
//! CHAP_R, and credentials. The login state machine (`crate::login`) drives the exchange.
//!
//! The response to a challenge is H(identifier || secret || challenge) (RFC 1994 4.1), with H chosen by CHAP_A
//! from IANA's "PPP Authentication Algorithms" registry: 5 MD5, 6 SHA-1, 7 SHA-256, 8 SHA3-256 (RFC 7143 12.1.3
//! lists 5; the others are what Linux's target also accepts).

use md5::Md5;
use sha1::Sha1;
use sha2::Sha256;
use sha3::{Digest, Sha3_256};
use subtle::ConstantTimeEq;

/// Challenge length we send. RFC 7143 12.1.3 asks for challenges that are unpredictable and not repeated; 32
/// random bytes from the OS are both (the floor the project sets is 16).
pub const CHALLENGE_BYTES: usize = 32;
/// Shortest secret accepted (RFC 7143 12.1.3: "at least 96 bits", 12 bytes, for secrets not generated randomly).
pub const MIN_SECRET_BYTES: usize = 12;
/// Longest CHAP_C we accept from an initiator (RFC 7143 12.1.3: at most 1024 bytes).
pub const MAX_CHALLENGE_BYTES: usize = 1024;

/// A CHAP algorithm, by its IANA number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha1,
    Sha256,
    Sha3_256,
}

impl Algorithm {
    /// Our preference when the initiator offers several: the strongest first.
    const PREFERENCE: [Algorithm; 4] = [
        Algorithm::Sha3_256,
        Algorithm::Sha256,
        Algorithm::Sha1,
        Algorithm::Md5,
    ];

    pub fn number(self) -> u8 {
        match self {
            Algorithm::Md5 => 5,
            Algorithm::Sha1 => 6,
            Algorithm::Sha256 => 7,
            Algorithm::Sha3_256 => 8,
        }
    }

    /// The algorithm a CHAP_A value names. The value is compared whole, as a decimal number: "55" is not 5 (LIO
    /// once read only its first digit) and neither is "05x".
    pub fn from_value(value: &str) -> Option<Algorithm> {
        match value {
            "5" => Some(Algorithm::Md5),
            "6" => Some(Algorithm::Sha1),
            "7" => Some(Algorithm::Sha256),
            "8" => Some(Algorithm::Sha3_256),
            _ => None,
        }
    }

    /// The one we choose from a CHAP_A list (RFC 7143 12.1.3: the target picks one of those offered), or None when
    /// nothing offered is known.
    pub fn choose(offered: &str) -> Option<Algorithm> {
        let offered: Vec<Algorithm> = offered
            .split(',')
            .filter_map(Algorithm::from_value)
            .collect();
        Algorithm::PREFERENCE
            .into_iter()
            .find(|a| offered.contains(a))
    }

    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 | Algorithm::Sha3_256 => 32,
        }
    }

    /// RFC 1994 4.1: H(identifier || secret || challenge).
    pub fn response(self, identifier: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        fn hash<D: Digest>(identifier: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
            let mut hasher = D::new();
            hasher.update([identifier]);
            hasher.update(secret);
            hasher.update(challenge);
            hasher.finalize().to_vec()
        }
        match self {
            Algorithm::Md5 => hash::<Md5>(identifier, secret, challenge),
            Algorithm::Sha1 => hash::<Sha1>(identifier, secret, challenge),
            Algorithm::Sha256 => hash::<Sha256>(identifier, secret, challenge),
            Algorithm::Sha3_256 => hash::<Sha3_256>(identifier, secret, challenge),
        }
    }

    /// Whether `received` is the response to our challenge, compared in constant time so that its timing tells an
    /// attacker nothing about how much of a forged response was right.
    pub fn verify(self, identifier: u8, secret: &[u8], challenge: &[u8], received: &[u8]) -> bool {
        let expected = self.response(identifier, secret, challenge);
        expected.len() == received.len() && bool::from(expected.ct_eq(received))
    }
}

/// One side's credentials: the CHAP_N it sends or expects, and the secret. Debug never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// What a target demands of the initiators of one target (or of discovery sessions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChapPolicy {
    /// The initiator must answer our challenge as this user with this secret.
    pub initiator: Credentials,
    /// Mutual CHAP: the target's own credentials, with which it answers the initiator's challenge.
    pub target: Option<Credentials>,
}

/// Why a policy cannot be used (checked when the configuration is loaded, so that a bad one never starts).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("the CHAP secret of {user:?} is {len} bytes; RFC 7143 12.1.3 asks for at least {MIN_SECRET_BYTES}")]
    SecretTooShort { user: String, len: usize },
    #[error("the CHAP secret of {user:?} is also the mutual CHAP secret; RFC 7143 12.1.3 forbids one secret in both directions")]
    SameSecretBothWays { user: String },
}

impl ChapPolicy {
    pub fn check(&self) -> Result<(), PolicyError> {
        for credentials in std::iter::once(&self.initiator).chain(self.target.as_ref()) {
            if credentials.secret.len() < MIN_SECRET_BYTES {
                return Err(PolicyError::SecretTooShort {
                    user: credentials.user.clone(),
                    len: credentials.secret.len(),
                });
            }
        }
        if let Some(target) = &self.target {
            if bool::from(target.secret.ct_eq(&self.initiator.secret)) {
                return Err(PolicyError::SameSecretBothWays {
                    user: self.initiator.user.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Encodes a binary value as RFC 7143 6.1's hexadecimal form, "0x..." in lowercase.
pub fn encode_binary(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(2 + bytes.len() * 2);
    text.push_str("0x");
    for byte in bytes {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// Decodes a binary value in either of RFC 7143 6.1's forms: "0x"/"0X" and hexadecimal digits (an odd count is
/// allowed: the first digit is then a whole byte's low half), or "0b"/"0B" and base64 (RFC 4648, with padding).
pub fn decode_binary(text: &str) -> Option<Vec<u8>> {
    let (prefix, body) = (text.get(..2)?, text.get(2..)?);
    match prefix {
        "0x" | "0X" => decode_hex(body),
        "0b" | "0B" => decode_base64(body),
        _ => None,
    }
}

fn decode_hex(body: &str) -> Option<Vec<u8>> {
    if body.is_empty() {
        return None;
    }
    let digits: Vec<u8> = body
        .chars()
        .map(|c| c.to_digit(16).map(|d| d as u8))
        .collect::<Option<_>>()?;
    let mut bytes = Vec::with_capacity(digits.len().div_ceil(2));
    let (head, rest) = digits.split_at(digits.len() % 2);
    bytes.extend(head.iter().copied());
    bytes.extend(rest.chunks(2).map(|pair| pair[0] << 4 | pair[1]));
    Some(bytes)
}

fn decode_base64(body: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some((c - b'A') as u32),
            b'a'..=b'z' => Some((c - b'a' + 26) as u32),
            b'0'..=b'9' => Some((c - b'0' + 52) as u32),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let body = body.as_bytes();
    if body.is_empty() || !body.len().is_multiple_of(4) {
        return None;
    }
    let padding = body.iter().rev().take_while(|&&c| c == b'=').count();
    if padding > 2 {
        return None;
    }
    let (mut bits, mut buffer, mut bytes) = (0u32, 0u32, Vec::with_capacity(body.len() / 4 * 3));
    for &c in &body[..body.len() - padding] {
        buffer = (buffer << 6 | value(c)?) & 0xFFFF;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((buffer >> bits) as u8);
        }
    }
    (bytes.len() == body.len() / 4 * 3 - padding).then_some(bytes)
}

/// Fresh challenge material from the OS: an identifier and [`CHALLENGE_BYTES`] of challenge.
pub fn fresh_challenge() -> (u8, Vec<u8>) {
    let mut bytes = [0u8; 1 + CHALLENGE_BYTES];
    // The OS generator does not fail on Linux once booted; if it ever did, no login could be secured, and a
    // predictable challenge must never be sent instead.
    getrandom::getrandom(&mut bytes).expect("the OS random number generator failed");
    (bytes[0], bytes[1..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors computed independently of this code, with Python's hashlib:
    /// `hashlib.new(name, bytes([id]) + secret + challenge).hexdigest()` for id 0x2a, secret
    /// b"lunlock-secret-12", challenge bytes(range(16)).
    #[test]
    fn responses_match_hashlib() {
        let challenge: Vec<u8> = (0..16).collect();
        let cases = [
            (Algorithm::Md5, "md5"),
            (Algorithm::Sha1, "sha1"),
            (Algorithm::Sha256, "sha256"),
            (Algorithm::Sha3_256, "sha3_256"),
        ];
        for (algorithm, name) in cases {
            let got = encode_binary(&algorithm.response(0x2a, b"lunlock-secret-12", &challenge));
            let wanted = python_vector(name);
            assert_eq!(got, format!("0x{wanted}"), "{name}");
            assert_eq!(algorithm.digest_len() * 2 + 2, got.len());
        }
    }

    fn python_vector(name: &str) -> &'static str {
        match name {
            "md5" => MD5_VECTOR,
            "sha1" => SHA1_VECTOR,
            "sha256" => SHA256_VECTOR,
            _ => SHA3_256_VECTOR,
        }
    }

    // Filled from `python3 -c` (see responses_match_hashlib).
    const MD5_VECTOR: &str = "1a45a2a198bf81fc86a645f4585abdb2";
    const SHA1_VECTOR: &str = "fd4a8355a44a021d511cf80beb0ac93c3d675a33";
    const SHA256_VECTOR: &str = "ed1aff656aa2b68248bd93bf55703882280b702394c26f33a980bdd503d682bb";
    const SHA3_256_VECTOR: &str =
        "6ffb4c859751620d3b62d94dc510fefc3fe614c69308f64d0f9d3ce5d8efd091";

    #[test]
    fn algorithm_values_are_compared_whole() {
        assert_eq!(Algorithm::from_value("5"), Some(Algorithm::Md5));
        for bad in ["55", "05", "5 ", "", "5,6", "0x5", "9"] {
            assert_eq!(Algorithm::from_value(bad), None, "{bad:?}");
        }
        assert_eq!(Algorithm::choose("55"), None);
        assert_eq!(Algorithm::choose("55,5"), Some(Algorithm::Md5));
        assert_eq!(Algorithm::choose("5,7"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::choose("8,5,6"), Some(Algorithm::Sha3_256));
        assert_eq!(Algorithm::choose("1,2,3"), None);
    }

    #[test]
    fn verification_needs_the_whole_right_response() {
        let right = Algorithm::Md5.response(7, b"twelve-bytes", b"challenge");
        assert!(Algorithm::Md5.verify(7, b"twelve-bytes", b"challenge", &right));
        assert!(!Algorithm::Md5.verify(8, b"twelve-bytes", b"challenge", &right));
        assert!(!Algorithm::Md5.verify(7, b"twelve-bytez", b"challenge", &right));
        assert!(!Algorithm::Md5.verify(7, b"twelve-bytes", b"challenge", &right[..15]));
        let mut longer = right.clone();
        longer.push(0);
        assert!(!Algorithm::Md5.verify(7, b"twelve-bytes", b"challenge", &longer));
    }

    #[test]
    fn binary_values_decode_in_both_forms() {
        assert_eq!(decode_binary("0x00ff10"), Some(vec![0x00, 0xff, 0x10]));
        assert_eq!(decode_binary("0XABC"), Some(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0bAAEC"), Some(vec![0, 1, 2]));
        assert_eq!(decode_binary("0BAAE="), Some(vec![0, 1]));
        assert_eq!(decode_binary("0bAA=="), Some(vec![0]));
        for bad in [
            "", "0x", "00ff", "0xg0", "0b", "0bAAE", "0bA===", "0bAA=A", "0y00",
        ] {
            assert_eq!(decode_binary(bad), None, "{bad:?}");
        }
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(decode_binary(&encode_binary(&bytes)), Some(bytes));
    }

    #[test]
    fn policies_refuse_short_and_shared_secrets() {
        let credentials = |user: &str, secret: &[u8]| Credentials {
            user: user.into(),
            secret: secret.to_vec(),
        };
        let short = ChapPolicy {
            initiator: credentials("node1", b"elevenbytes"),
            target: None,
        };
        assert!(matches!(
            short.check(),
            Err(PolicyError::SecretTooShort { len: 11, .. })
        ));
        let shared = ChapPolicy {
            initiator: credentials("node1", b"twelve-bytes"),
            target: Some(credentials("target", b"twelve-bytes")),
        };
        assert!(matches!(
            shared.check(),
            Err(PolicyError::SameSecretBothWays { .. })
        ));
        let good = ChapPolicy {
            initiator: credentials("node1", b"twelve-bytes"),
            target: Some(credentials("target", b"other-secret")),
        };
        assert_eq!(good.check(), Ok(()));
        assert!(
            !format!("{good:?}").contains("twelve"),
            "Debug never shows a secret"
        );
    }

    #[test]
    fn challenges_are_fresh() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let (_, challenge) = fresh_challenge();
            assert_eq!(challenge.len(), CHALLENGE_BYTES);
            assert!(seen.insert(challenge), "a challenge repeated");
        }
    }
}
