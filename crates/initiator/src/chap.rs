//! The initiator's half of CHAP (RFC 7143 12.1.3, RFC 1994), sans-IO: what to send in each request of the
//! security stage and what to check in each answer.
//!
//! The exchange is four steps: we offer AuthMethod=CHAP (with None beside it unless we demand mutual CHAP), send
//! our CHAP_A list once the target agrees, answer its CHAP_I/CHAP_C with CHAP_N/CHAP_R (adding our own challenge
//! for mutual CHAP), and finally check the target's CHAP_N/CHAP_R. A target that skips a step, answers outside
//! what we offered, or cannot prove itself ends the login here, before any operational key is sent.

use lunlock_iscsi::chap::{self, Algorithm, Credentials};
use lunlock_iscsi::TextPairs;

/// What the initiator authenticates with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChapCredentials {
    /// Our CHAP_N and secret, with which we answer the target's challenge.
    pub initiator: Credentials,
    /// Mutual CHAP: the CHAP_N and secret the target must answer our challenge with. When set, a target that does
    /// not authenticate itself is refused (no downgrade to one-way CHAP or to None).
    pub target: Option<Credentials>,
}

/// Algorithms we offer, strongest first (RFC 7143 12.1.3: the target picks one of the list).
const OFFERED_ALGORITHMS: &str = "8,7,6,5";

/// Keys that belong to the security exchange and are handled here, not by operational negotiation.
pub(crate) fn is_security_key(key: &str) -> bool {
    matches!(
        key,
        "AuthMethod" | "CHAP_A" | "CHAP_I" | "CHAP_C" | "CHAP_N" | "CHAP_R"
    )
}

/// Why a CHAP exchange failed on our side.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChapError {
    #[error("the target chose AuthMethod={0}; we asked for mutual CHAP")]
    DowngradeRefused(String),
    #[error("the target answered AuthMethod={0}, which we did not offer")]
    UnofferedMethod(String),
    #[error("the target sent {0} out of turn in the CHAP exchange")]
    OutOfTurn(&'static str),
    #[error("the target chose CHAP_A={0}, which we did not offer")]
    UnofferedAlgorithm(String),
    #[error("the target's CHAP challenge is malformed")]
    BadChallenge,
    #[error("the target did not prove its identity: {0}")]
    TargetNotAuthenticated(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    MethodOffered,
    AlgorithmsOffered,
    Answered {
        algorithm: Algorithm,
        our_challenge: Option<(u8, Vec<u8>)>,
    },
    Done,
}

/// What to do after an answer of the security stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Send these keys in the next request of the security stage, with T set as given.
    Send { keys: TextPairs, transit: bool },
    /// Authentication is over (or the target chose None): go on as without CHAP.
    Proceed,
}

/// The exchange in progress.
pub(crate) struct ChapClient<'a> {
    credentials: &'a ChapCredentials,
    step: Step,
    /// Our challenge, when a test fixes it; otherwise a fresh one from the OS.
    fixed_challenge: Option<(u8, Vec<u8>)>,
}

impl<'a> ChapClient<'a> {
    pub(crate) fn new(credentials: &'a ChapCredentials) -> ChapClient<'a> {
        ChapClient {
            credentials,
            step: Step::MethodOffered,
            fixed_challenge: None,
        }
    }

    #[cfg(test)]
    fn with_challenge(mut self, identifier: u8, challenge: Vec<u8>) -> Self {
        self.fixed_challenge = Some((identifier, challenge));
        self
    }

    /// The AuthMethod we offer in the first request.
    pub(crate) fn auth_methods(&self) -> &'static str {
        if self.credentials.target.is_some() {
            "CHAP"
        } else {
            "CHAP,None"
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.step == Step::Done
    }

    /// Takes the security keys of one answer and says what to send next.
    pub(crate) fn advance(&mut self, answers: &TextPairs) -> Result<Next, ChapError> {
        match std::mem::replace(&mut self.step, Step::Done) {
            Step::MethodOffered => self.on_method(answers),
            Step::AlgorithmsOffered => self.on_challenge(answers),
            Step::Answered {
                algorithm,
                our_challenge,
            } => self.on_target_response(answers, algorithm, our_challenge),
            Step::Done => Ok(Next::Proceed),
        }
    }

    fn on_method(&mut self, answers: &TextPairs) -> Result<Next, ChapError> {
        let method = answers.get("AuthMethod").ok_or(ChapError::OutOfTurn(
            "a security-stage answer without AuthMethod",
        ))?;
        if !self.auth_methods().split(',').any(|m| m == method) {
            return Err(match method {
                "None" => ChapError::DowngradeRefused(method.to_string()),
                _ => ChapError::UnofferedMethod(method.to_string()),
            });
        }
        if method == "None" {
            return Ok(Next::Proceed);
        }
        self.step = Step::AlgorithmsOffered;
        let mut keys = TextPairs::new();
        keys.push("CHAP_A", OFFERED_ALGORITHMS);
        Ok(Next::Send {
            keys,
            transit: false,
        })
    }

    fn on_challenge(&mut self, answers: &TextPairs) -> Result<Next, ChapError> {
        let chosen = answers
            .get("CHAP_A")
            .ok_or(ChapError::OutOfTurn("a challenge without CHAP_A"))?;
        let algorithm = Algorithm::from_value(chosen)
            .filter(|a| {
                OFFERED_ALGORITHMS
                    .split(',')
                    .any(|o| o == a.number().to_string())
            })
            .ok_or_else(|| ChapError::UnofferedAlgorithm(chosen.to_string()))?;
        let identifier: u8 = answers
            .get("CHAP_I")
            .and_then(|i| i.parse().ok())
            .ok_or(ChapError::BadChallenge)?;
        let challenge = answers
            .get("CHAP_C")
            .and_then(chap::decode_binary)
            .filter(|c| !c.is_empty() && c.len() <= chap::MAX_CHALLENGE_BYTES)
            .ok_or(ChapError::BadChallenge)?;
        let ours = &self.credentials.initiator;
        let mut keys = TextPairs::new();
        keys.push("CHAP_N", ours.user.clone());
        keys.push(
            "CHAP_R",
            chap::encode_binary(&algorithm.response(identifier, &ours.secret, &challenge)),
        );
        let our_challenge = match &self.credentials.target {
            Some(_) => {
                let (identifier, mine) = self
                    .fixed_challenge
                    .take()
                    .unwrap_or_else(chap::fresh_challenge);
                keys.push("CHAP_I", identifier.to_string());
                keys.push("CHAP_C", chap::encode_binary(&mine));
                Some((identifier, mine))
            }
            None => None,
        };
        self.step = Step::Answered {
            algorithm,
            our_challenge,
        };
        Ok(Next::Send {
            keys,
            transit: true,
        })
    }

    fn on_target_response(
        &mut self,
        answers: &TextPairs,
        algorithm: Algorithm,
        our_challenge: Option<(u8, Vec<u8>)>,
    ) -> Result<Next, ChapError> {
        let (name, response) = (answers.get("CHAP_N"), answers.get("CHAP_R"));
        match (&self.credentials.target, our_challenge) {
            (Some(expected), Some((identifier, challenge))) => {
                let name = name.ok_or(ChapError::TargetNotAuthenticated("no CHAP_N"))?;
                let response = response
                    .and_then(chap::decode_binary)
                    .ok_or(ChapError::TargetNotAuthenticated("no valid CHAP_R"))?;
                let right_response =
                    algorithm.verify(identifier, &expected.secret, &challenge, &response);
                if name != expected.user || !right_response {
                    return Err(ChapError::TargetNotAuthenticated("wrong CHAP_N or CHAP_R"));
                }
            }
            _ if name.is_some() || response.is_some() => {
                return Err(ChapError::OutOfTurn("CHAP_N/CHAP_R we did not ask for"));
            }
            _ => {}
        }
        self.step = Step::Done;
        Ok(Next::Proceed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(mutual: bool) -> ChapCredentials {
        ChapCredentials {
            initiator: Credentials {
                user: "host1".into(),
                secret: b"initiator-secret".to_vec(),
            },
            target: mutual.then(|| Credentials {
                user: "array".into(),
                secret: b"the-target-secret".to_vec(),
            }),
        }
    }

    fn pairs(list: &[(&str, &str)]) -> TextPairs {
        let mut pairs = TextPairs::new();
        for (key, value) in list {
            pairs.push(*key, *value);
        }
        pairs
    }

    fn sent(next: Next) -> TextPairs {
        match next {
            Next::Send { keys, .. } => keys,
            Next::Proceed => panic!("expected keys to send"),
        }
    }

    #[test]
    fn one_way_answers_the_challenge_with_the_rfc_1994_hash() {
        let credentials = credentials(false);
        let mut client = ChapClient::new(&credentials);
        assert_eq!(client.auth_methods(), "CHAP,None");
        let keys = sent(client.advance(&pairs(&[("AuthMethod", "CHAP")])).unwrap());
        assert_eq!(keys.get("CHAP_A"), Some(OFFERED_ALGORITHMS));
        let answer = client
            .advance(&pairs(&[
                ("CHAP_A", "5"),
                ("CHAP_I", "7"),
                ("CHAP_C", "0x0102030405060708090a0b0c0d0e0f10"),
            ]))
            .unwrap();
        let keys = sent(answer);
        assert_eq!(keys.get("CHAP_N"), Some("host1"));
        // hashlib.md5(bytes([7]) + b"initiator-secret" + bytes(range(1, 17))).hexdigest()
        assert_eq!(
            keys.get("CHAP_R"),
            Some("0xb7b647fb02ad1f52a251ee090b464613")
        );
        assert!(keys.get("CHAP_C").is_none());
        assert_eq!(client.advance(&TextPairs::new()).unwrap(), Next::Proceed);
        assert!(client.done());
    }

    #[test]
    fn mutual_checks_the_target_and_refuses_a_downgrade() {
        let credentials = credentials(true);
        let challenge = vec![0x5a; 16];
        let start = || {
            let mut client = ChapClient::new(&credentials).with_challenge(3, challenge.clone());
            client.advance(&pairs(&[("AuthMethod", "CHAP")])).unwrap();
            let keys = sent(
                client
                    .advance(&pairs(&[
                        ("CHAP_A", "7"),
                        ("CHAP_I", "1"),
                        ("CHAP_C", "0xaabbccdd"),
                    ]))
                    .unwrap(),
            );
            assert_eq!(keys.get("CHAP_I"), Some("3"));
            client
        };
        let proof = Algorithm::Sha256.response(3, b"the-target-secret", &challenge);
        let mut client = start();
        let good = pairs(&[
            ("CHAP_N", "array"),
            ("CHAP_R", &chap::encode_binary(&proof)),
        ]);
        assert_eq!(client.advance(&good).unwrap(), Next::Proceed);
        let mut client = start();
        let wrong = Algorithm::Sha256.response(3, b"another-secret!!", &challenge);
        let bad = pairs(&[
            ("CHAP_N", "array"),
            ("CHAP_R", &chap::encode_binary(&wrong)),
        ]);
        assert!(matches!(
            client.advance(&bad),
            Err(ChapError::TargetNotAuthenticated(_))
        ));
        let mut client = start();
        assert!(client.advance(&TextPairs::new()).is_err());
        let mut client = ChapClient::new(&credentials);
        assert_eq!(client.auth_methods(), "CHAP");
        assert!(matches!(
            client.advance(&pairs(&[("AuthMethod", "None")])),
            Err(ChapError::DowngradeRefused(_))
        ));
    }

    #[test]
    fn answers_outside_the_offer_are_refused() {
        let credentials = credentials(false);
        let mut client = ChapClient::new(&credentials);
        assert!(client.advance(&pairs(&[("AuthMethod", "SRP")])).is_err());
        let mut client = ChapClient::new(&credentials);
        client.advance(&pairs(&[("AuthMethod", "CHAP")])).unwrap();
        for bad in ["55", "05", "4", ""] {
            let mut probe = ChapClient::new(&credentials);
            probe.advance(&pairs(&[("AuthMethod", "CHAP")])).unwrap();
            assert!(probe
                .advance(&pairs(&[
                    ("CHAP_A", bad),
                    ("CHAP_I", "1"),
                    ("CHAP_C", "0x01")
                ]))
                .is_err());
        }
        assert_eq!(
            client.advance(&pairs(&[
                ("CHAP_A", "5"),
                ("CHAP_I", "1"),
                ("CHAP_C", "0x")
            ])),
            Err(ChapError::BadChallenge)
        );
    }
}
