//! The login phase, target role (`lunlock_iscsi::login::TargetLogin`), fed a sequence of Login Requests whose text
//! is built from key=value pairs the input chooses: the session keys, operational keys, and CHAP's (AuthMethod,
//! CHAP_A, CHAP_I, CHAP_C, CHAP_N, CHAP_R), against LoginSettings with and without a ChapPolicy (one-way or
//! mutual, per target, per initiator through `PortalTarget::initiator_chap` (ACL entries), and for discovery). The
//! challenge is fixed with `with_challenge`, and CHAP_R can be the right response to the challenge the target sent
//! (computed here with the secret of the policy the identity offered so far selects), so the fuzzer gets past
//! authentication as well as failing it. Requests go through the wire the way the server reads them
//! (`to_pdu`, `pdu::decode`, `LoginRequest::from_pdu`). Also: `TextPairs::parse` and `chap::decode_binary` on
//! arbitrary bytes.
//!
//! Asserts: no panic; responses are well-formed text with the request's ITT, ISID and dense StatSN, and survive
//! their own PDU encoding; a login that completes names an initiator, a known target that admits it (normal
//! sessions), and, whenever the policy of the final identity (`chap_for` of the target and initiator, or discovery's)
//! exists, the initiator answered the target's challenge as that policy's user with that policy's secret (so no
//! login authenticates under one identity and completes as another) and `chap_user` is that user; negotiated
//! parameters are within what the target offers; a mutual CHAP_R from the target is the right answer to the
//! initiator's challenge; TextPairs and binary values round-trip.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use lunlock_iscsi::chap::{self, Algorithm, ChapPolicy, Credentials};
use lunlock_iscsi::login::{
    self, LoginOutcome, LoginSettings, PortalTarget, SessionKind, TargetLogin,
    MAX_LOGIN_TEXT_BYTES,
};
use lunlock_iscsi::message::{LoginRequest, LoginResponse};
use lunlock_iscsi::pdu::{self, Digests};
use lunlock_iscsi::text::TextPairs;

const OPEN_TARGET: &str = "iqn.2026-11.io.lunlock:open";
const CHAP_TARGET: &str = "iqn.2026-11.io.lunlock:chap";
const LISTED_TARGET: &str = "iqn.2026-11.io.lunlock:listed";
const INITIATOR: &str = "iqn.1998-01.com.vmware:esx1";
/// An initiator with an ACL entry of its own on OPEN_TARGET (CHAP demanded of it alone).
const INITIATOR2: &str = "iqn.1998-01.com.vmware:esx2";
const INITIATOR_SECRET: &[u8] = b"initiator-secret-16";
const TARGET_SECRET: &[u8] = b"target-secret-of-the-array";
const DISCOVERY_SECRET: &[u8] = b"discovery-secret!";
/// INITIATOR's own credentials on CHAP_TARGET (an ACL entry, in place of the target's).
const ACL_USER: &str = "esx1-own";
const ACL_SECRET: &[u8] = b"esx1-own-acl-secret";
const ACL_TARGET_SECRET: &[u8] = b"array-answers-esx1-only";
/// INITIATOR2's credentials on OPEN_TARGET.
const ACL2_USER: &str = "esx2";
const ACL2_SECRET: &[u8] = b"esx2-on-the-open-target";
const MAX_REQUESTS: usize = 16;

#[derive(Arbitrary, Debug)]
struct Input {
    /// CHAP on CHAP_TARGET: one-way or mutual.
    mutual: bool,
    /// CHAP for discovery: none, one-way, mutual.
    discovery_chap: u8,
    /// Bit 0: INITIATOR has its own ACL CHAP entry on CHAP_TARGET (bit 1: mutual); bit 2: INITIATOR2 has one on
    /// OPEN_TARGET.
    acl: u8,
    identifier: u8,
    challenge: Vec<u8>,
    requests: Vec<Request>,
    /// Parsed on its own: TextPairs and binary values.
    text: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Request {
    transit: bool,
    continue_bit: bool,
    csg: u8,
    nsg: u8,
    version_min: u8,
    /// Raw header fields, or those of the first request (as a well-behaved initiator keeps them).
    header: Option<([u8; 6], u16, u32, u16)>,
    cmd_sn: u32,
    exp_stat_sn: Option<u32>,
    keys: Vec<Key>,
    /// Bytes appended to the text as they are (malformed text, padding, a pair cut for a C-bit continuation).
    tail: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Key {
    InitiatorName(Name),
    TargetName(Name),
    SessionType(Choice),
    AuthMethod(Choice),
    ChapA(Choice),
    ChapN(Name),
    /// CHAP_R: the right response to the challenge the target sent, or wrong bytes.
    ChapR(Response),
    /// CHAP_I and CHAP_C of a mutual CHAP challenge.
    ChapIC { identifier: Option<String>, challenge: Binary },
    Operational(u8, Choice),
    Raw(String, String),
}

#[derive(Arbitrary, Debug)]
enum Name {
    Initiator,
    Initiator2,
    OpenTarget,
    ChapTarget,
    ListedTarget,
    ChapUser,
    DiscoveryUser,
    AclUser,
    Acl2User,
    Empty,
    Raw(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::Initiator => INITIATOR.into(),
            Name::Initiator2 => INITIATOR2.into(),
            Name::OpenTarget => OPEN_TARGET.into(),
            Name::ChapTarget => CHAP_TARGET.into(),
            Name::ListedTarget => LISTED_TARGET.into(),
            Name::ChapUser => "esx-cluster".into(),
            Name::DiscoveryUser => "discovery".into(),
            Name::AclUser => ACL_USER.into(),
            Name::Acl2User => ACL2_USER.into(),
            Name::Empty => String::new(),
            Name::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Choice {
    /// A value that is valid for the key (what a well-behaved initiator sends).
    Valid(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Response {
    /// The right response for the policy the identity offered so far selects.
    Right,
    /// The response computed with one of the secrets the harness knows, whichever policy is in force.
    Secret(u8),
    /// The right response with one bit flipped.
    Flipped(u16),
    Binary(Binary),
}

#[derive(Arbitrary, Debug)]
enum Binary {
    Hex(Vec<u8>),
    Base64(Vec<u8>),
    Raw(String),
}

impl Binary {
    fn text(&self) -> String {
        match self {
            Binary::Hex(bytes) => chap::encode_binary(bytes),
            Binary::Base64(bytes) => format!("0b{}", base64(bytes)),
            Binary::Raw(s) => s.clone(),
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn pick<'a>(choice: &'a Choice, valid: &[&'a str]) -> String {
    match choice {
        Choice::Valid(n) => valid[*n as usize % valid.len()].to_string(),
        Choice::Raw(s) => s.clone(),
    }
}

const OPERATIONAL: [(&str, &[&str]); 16] = [
    ("HeaderDigest", &["None", "CRC32C", "CRC32C,None", "None,CRC32C"]),
    ("DataDigest", &["None", "CRC32C", "CRC32C,None"]),
    ("MaxRecvDataSegmentLength", &["512", "8192", "262144", "16777215", "0x2000"]),
    ("MaxBurstLength", &["512", "262144", "16776192", "0x100000"]),
    ("FirstBurstLength", &["512", "65536", "16776192"]),
    ("MaxOutstandingR2T", &["1", "8", "65535"]),
    ("MaxConnections", &["1", "4"]),
    ("ImmediateData", &["Yes", "No"]),
    ("InitialR2T", &["Yes", "No"]),
    ("DataPDUInOrder", &["Yes", "No"]),
    ("DataSequenceInOrder", &["Yes", "No"]),
    ("ErrorRecoveryLevel", &["0", "1", "2"]),
    ("DefaultTime2Wait", &["0", "2", "3600"]),
    ("DefaultTime2Retain", &["0", "20", "3600"]),
    ("InitiatorAlias", &["esx1", ""]),
    ("IFMarker", &["No", "Yes"]),
];

fn initiator_credentials() -> Credentials {
    Credentials {
        user: "esx-cluster".into(),
        secret: INITIATOR_SECRET.to_vec(),
    }
}

fn settings(input: &Input) -> LoginSettings {
    let target_credentials = || Credentials {
        user: "lunlock-array".into(),
        secret: TARGET_SECRET.to_vec(),
    };
    let discovery_chap = match input.discovery_chap % 3 {
        0 => None,
        n => Some(ChapPolicy {
            initiator: Credentials {
                user: "discovery".into(),
                secret: DISCOVERY_SECRET.to_vec(),
            },
            target: (n == 2).then(target_credentials),
        }),
    };
    LoginSettings {
        targets: vec![
            PortalTarget {
                name: OPEN_TARGET.into(),
                alias: Some("open".into()),
                allowed_initiators: None,
                chap: None,
                initiator_chap: if input.acl & 4 != 0 {
                    vec![(
                        INITIATOR2.into(),
                        ChapPolicy {
                            initiator: Credentials {
                                user: ACL2_USER.into(),
                                secret: ACL2_SECRET.to_vec(),
                            },
                            target: None,
                        },
                    )]
                } else {
                    Vec::new()
                },
            },
            PortalTarget {
                name: CHAP_TARGET.into(),
                alias: None,
                allowed_initiators: None,
                chap: Some(ChapPolicy {
                    initiator: initiator_credentials(),
                    target: input.mutual.then(target_credentials),
                }),
                initiator_chap: if input.acl & 1 != 0 {
                    vec![(
                        INITIATOR.into(),
                        ChapPolicy {
                            initiator: Credentials {
                                user: ACL_USER.into(),
                                secret: ACL_SECRET.to_vec(),
                            },
                            target: (input.acl & 2 != 0).then(|| Credentials {
                                user: "lunlock-array-acl".into(),
                                secret: ACL_TARGET_SECRET.to_vec(),
                            }),
                        },
                    )]
                } else {
                    Vec::new()
                },
            },
            PortalTarget {
                name: LISTED_TARGET.into(),
                alias: None,
                allowed_initiators: Some(vec![INITIATOR.into()]),
                chap: None,
                initiator_chap: Vec::new(),
            },
        ],
        discovery_chap,
        ..LoginSettings::default()
    }
}

/// Who the login is for, from the text the target has been offered: the first InitiatorName, TargetName and
/// SessionType (RFC 7143 6.2: declarative, never changed; the target fails a login that tries).
#[derive(Clone, Default, Debug)]
struct Identity {
    initiator: Option<String>,
    target: Option<String>,
    discovery: Option<bool>,
}

impl Identity {
    fn update(&mut self, offered: &TextPairs) {
        for (key, value) in offered.iter() {
            match key {
                "InitiatorName" if self.initiator.is_none() && !value.is_empty() => {
                    self.initiator = Some(value.into())
                }
                "TargetName" if self.target.is_none() => self.target = Some(value.into()),
                "SessionType" if self.discovery.is_none() && (value == "Discovery" || value == "Normal") => {
                    self.discovery = Some(value == "Discovery")
                }
                _ => {}
            }
        }
    }

    /// The CHAP policy this identity must satisfy, from the settings alone.
    fn policy<'a>(&self, settings: &'a LoginSettings) -> Option<&'a ChapPolicy> {
        if self.discovery == Some(true) {
            return settings.discovery_chap.as_ref();
        }
        let name = self.target.as_deref()?;
        settings
            .targets
            .iter()
            .find(|t| t.name == name)?
            .chap_for(self.initiator.as_deref())
    }
}

/// What the harness knows of the CHAP exchange, from the responses.
#[derive(Default)]
struct Chap {
    /// CHAP_A, CHAP_I and CHAP_C the target sent.
    challenge: Option<(Algorithm, u8, Vec<u8>)>,
    /// Text of requests with C=1, waiting for the request that completes it (as the target accumulates it).
    pending: Vec<u8>,
    /// The identity of every request the target has answered.
    identity: Identity,
    /// The CHAP_N and CHAP_R values of requests the target accepted, with the challenge they answered.
    accepted: Vec<(Vec<String>, Vec<Vec<u8>>, (Algorithm, u8, Vec<u8>))>,
}

const SECRETS: [&[u8]; 6] = [
    INITIATOR_SECRET,
    DISCOVERY_SECRET,
    ACL_SECRET,
    ACL2_SECRET,
    TARGET_SECRET,
    ACL_TARGET_SECRET,
];

fuzz_target!(|input: Input| {
    check_text(&input.text);

    let settings = settings(&input);
    let challenge = if input.challenge.is_empty() {
        vec![0x42; chap::CHALLENGE_BYTES]
    } else {
        input.challenge.iter().copied().take(chap::MAX_CHALLENGE_BYTES).collect()
    };
    let mut login = TargetLogin::new(settings.clone()).with_challenge(input.identifier, challenge);
    let mut first: Option<LoginRequest> = None;
    let mut expected_stat_sn: Option<u32> = None;
    let mut chap = Chap::default();

    for request in input.requests.iter().take(MAX_REQUESTS) {
        let pdu = build(request, first.as_ref(), &mut chap, &settings);
        // Through the wire, as the server reads it.
        let pdu = match pdu::decode(&pdu.to_pdu().to_bytes(Digests::default()), Digests::default(), 1 << 24) {
            Ok(Some((wire, _))) => {
                let read = LoginRequest::from_pdu(&wire);
                assert_eq!(read, pdu, "LoginRequest does not survive its PDU");
                read
            }
            other => panic!("an encoded Login Request does not decode: {other:?}"),
        };
        if first.is_none() {
            first = Some(pdu.clone());
        }
        let first = first.as_ref().expect("set above");
        chap.pending.extend_from_slice(&pdu.data);
        let offered = if pdu.continue_bit {
            None
        } else {
            Some(std::mem::take(&mut chap.pending))
        };
        let outcome = login.handle_request(pdu.clone());
        let response = match &outcome {
            LoginOutcome::Continue(response)
            | LoginOutcome::Fail(response)
            | LoginOutcome::Complete { response, .. } => response.clone(),
        };
        check_response(&response, first, &mut expected_stat_sn);
        // Every answer is one key the initiator offered (or one of a few the target declares, CHAP_C among them,
        // whose length is the challenge this harness fixed, up to MAX_CHALLENGE_BYTES): bounded by the request's
        // text, whatever it holds.
        let offered_len = offered.as_ref().map_or(0, Vec::len);
        let fixed_challenge_text = 2 * chap::MAX_CHALLENGE_BYTES + 16;
        assert!(
            response.data.len() <= 6 * offered_len + 1024 + fixed_challenge_text,
            "a login response of {} bytes to {offered_len} bytes of text: {:?}",
            response.data.len(),
            String::from_utf8_lossy(&response.data)
        );
        let answers = TextPairs::parse(&response.data).expect("the target's text parses");
        if let (Some(a), Some(i), Some(c)) = (
            answers.get("CHAP_A"),
            answers.get("CHAP_I"),
            answers.get("CHAP_C"),
        ) {
            let algorithm = Algorithm::from_value(a).expect("the target names an algorithm it has");
            let identifier: u8 = i.parse().expect("CHAP_I is a number");
            let challenge = chap::decode_binary(c).expect("CHAP_C is a binary value");
            chap.challenge = Some((algorithm, identifier, challenge));
        }
        // What the target was offered, once a request completes its text: the identity, and the CHAP responses it
        // accepted (against the challenge in force: this response's when the same request carried CHAP_A).
        let offered_pairs = offered.as_deref().and_then(|text| TextPairs::parse(text).ok());
        if let Some(pairs) = &offered_pairs {
            chap.identity.update(pairs);
            if !matches!(outcome, LoginOutcome::Fail(_)) {
                let all = |key: &str| -> Vec<String> {
                    pairs.iter().filter(|(k, _)| *k == key).map(|(_, v)| v.to_string()).collect()
                };
                let responses: Vec<Vec<u8>> =
                    all("CHAP_R").iter().filter_map(|r| chap::decode_binary(r)).collect();
                if !responses.is_empty() {
                    if let Some(challenge) = chap.challenge.clone() {
                        chap.accepted.push((all("CHAP_N"), responses, challenge));
                    }
                }
            }
        }
        if let Some(r) = answers.get("CHAP_R") {
            // Mutual CHAP: the target proves it knows its secret (that of the policy in force), answering a CHAP_I
            // and CHAP_C the initiator offered.
            let offered = offered_pairs.as_ref().expect("CHAP_R answers a request whose text parsed");
            let all = |key: &str| offered.iter().filter(|(k, _)| *k == key).map(|(_, v)| v).collect::<Vec<_>>();
            let policy = chap.identity.policy(&settings).expect("mutual CHAP without a policy");
            let target = policy.target.as_ref().expect("mutual CHAP without target credentials");
            let (algorithm, ..) = chap.challenge.as_ref().expect("after our CHAP_A");
            let answer = chap::decode_binary(r).expect("the target's CHAP_R is a binary value");
            let right = all("CHAP_I").iter().filter_map(|i| i.parse::<u8>().ok()).any(|identifier| {
                all("CHAP_C")
                    .iter()
                    .filter_map(|c| chap::decode_binary(c))
                    .any(|c| algorithm.response(identifier, &target.secret, &c) == answer)
            });
            assert!(right, "the target's mutual CHAP_R is wrong");
            assert_eq!(answers.get("CHAP_N"), Some(target.user.as_str()));
        }
        match outcome {
            LoginOutcome::Continue(response) => {
                assert_eq!(
                    (response.status_class, response.status_detail),
                    login::status::SUCCESS
                );
                assert!(!response.transit || response.next_stage > response.current_stage);
            }
            LoginOutcome::Fail(response) => {
                assert_ne!(response.status_class, 0, "a failure with a success status");
                assert!(!response.transit);
                break;
            }
            LoginOutcome::Complete { response, result } => {
                assert_eq!(
                    (response.status_class, response.status_detail),
                    login::status::SUCCESS
                );
                assert!(response.transit && response.next_stage == 3);
                check_result(&settings, &result, &chap);
                break;
            }
        }
    }
});

fn build(request: &Request, first: Option<&LoginRequest>, chap: &mut Chap, settings: &LoginSettings) -> LoginRequest {
    let mut text = Vec::new();
    for key in &request.keys {
        let (name, value) = match key {
            Key::InitiatorName(name) => ("InitiatorName".to_string(), name.text()),
            Key::TargetName(name) => ("TargetName".into(), name.text()),
            Key::SessionType(choice) => ("SessionType".into(), pick(choice, &["Normal", "Discovery"])),
            Key::AuthMethod(choice) => (
                "AuthMethod".into(),
                pick(choice, &["CHAP", "None", "CHAP,None", "None,CHAP", "SRP,CHAP"]),
            ),
            Key::ChapA(choice) => ("CHAP_A".into(), pick(choice, &["5", "6", "7", "8", "8,7,6,5", "5,55"])),
            Key::ChapN(name) => ("CHAP_N".into(), name.text()),
            Key::ChapR(response) => {
                // The identity so far: what the target was offered, and this request's text up to here.
                let mut identity = chap.identity.clone();
                let mut so_far = chap.pending.clone();
                so_far.extend_from_slice(&text);
                if let Ok(pairs) = TextPairs::parse(&so_far) {
                    identity.update(&pairs);
                }
                let secret = match response {
                    Response::Secret(n) => SECRETS[*n as usize % SECRETS.len()].to_vec(),
                    _ => identity
                        .policy(settings)
                        .map_or(INITIATOR_SECRET.to_vec(), |p| p.initiator.secret.clone()),
                };
                let right = chap
                    .challenge
                    .as_ref()
                    .map(|(algorithm, identifier, challenge)| {
                        algorithm.response(*identifier, &secret, challenge)
                    })
                    .unwrap_or_else(|| vec![0; 16]);
                let value = match response {
                    Response::Right | Response::Secret(_) => chap::encode_binary(&right),
                    Response::Flipped(bit) => {
                        let mut wrong = right;
                        let bit = *bit as usize % (wrong.len() * 8);
                        wrong[bit / 8] ^= 1 << (bit % 8);
                        chap::encode_binary(&wrong)
                    }
                    Response::Binary(binary) => binary.text(),
                };
                ("CHAP_R".into(), value)
            }
            Key::ChapIC {
                identifier,
                challenge,
            } => {
                let identifier_text = identifier.clone().unwrap_or_else(|| "7".into());
                let challenge_text = challenge.text();
                text.extend_from_slice(format!("CHAP_I={identifier_text}\0").as_bytes());
                ("CHAP_C".into(), challenge_text)
            }
            Key::Operational(n, choice) => {
                let (key, values) = OPERATIONAL[*n as usize % OPERATIONAL.len()];
                (key.into(), pick(choice, values))
            }
            Key::Raw(key, value) => (key.clone(), value.clone()),
        };
        text.extend_from_slice(name.as_bytes());
        text.push(b'=');
        text.extend_from_slice(value.as_bytes());
        text.push(0);
    }
    text.extend_from_slice(&request.tail);
    text.truncate(MAX_LOGIN_TEXT_BYTES + 16);
    let (isid, tsih, itt, cid) = match (request.header, first) {
        (Some(header), _) => header,
        (None, Some(first)) => (first.isid, first.tsih, first.itt, first.cid),
        (None, None) => ([0x40, 0, 0, 0, 0, 1], 0, 1, 0),
    };
    LoginRequest {
        transit: request.transit,
        continue_bit: request.continue_bit,
        current_stage: request.csg % 4,
        next_stage: request.nsg % 4,
        version_max: 0,
        version_min: request.version_min % 2,
        isid,
        tsih,
        itt,
        cid,
        cmd_sn: first.map_or(request.cmd_sn, |f| f.cmd_sn),
        exp_stat_sn: request
            .exp_stat_sn
            .unwrap_or(first.map_or(0, |f| f.exp_stat_sn)),
        data: text,
    }
}

fn check_response(response: &LoginResponse, first: &LoginRequest, expected_stat_sn: &mut Option<u32>) {
    assert_eq!(&LoginResponse::from_pdu(&response.to_pdu()), response, "LoginResponse does not survive its PDU");
    assert_eq!(response.version_active, login::VERSION);
    assert!(!response.continue_bit);
    // Every response names the login's ITT and ISID (those of the first request).
    assert_eq!(response.itt, first.itt, "a login response with another ITT");
    assert_eq!(response.isid, first.isid, "a login response with another ISID");
    // StatSN starts at the first request's ExpStatSN and counts every response.
    let expected = expected_stat_sn.unwrap_or(first.exp_stat_sn);
    assert_eq!(response.sequence.stat_sn, expected, "StatSN skipped or repeated");
    *expected_stat_sn = Some(expected.wrapping_add(1));
}

fn check_result(settings: &LoginSettings, result: &login::LoginResult, chap: &Chap) {
    assert!(!result.initiator_name.is_empty(), "a login without InitiatorName");
    let policy = match result.kind {
        SessionKind::Discovery => settings.discovery_chap.as_ref(),
        SessionKind::Normal => {
            let name = result.target_name.as_deref().expect("a normal session names its target");
            let target = settings
                .targets
                .iter()
                .find(|t| t.name == name)
                .expect("a normal session's target exists");
            assert!(
                target.admits(&result.initiator_name),
                "{} logged in to {name}, which does not admit it",
                result.initiator_name
            );
            target.chap_for(Some(&result.initiator_name))
        }
    };
    // The security property: no login completes past a ChapPolicy without proving its user, with its secret,
    // whatever order the identity keys came in.
    if let Some(policy) = policy {
        assert_eq!(
            result.chap_user.as_deref(),
            Some(policy.initiator.user.as_str()),
            "a login completed without CHAP where the policy demands it"
        );
        let proved = chap.accepted.iter().any(|(names, responses, (algorithm, identifier, challenge))| {
            names.iter().any(|n| *n == policy.initiator.user)
                && responses
                    .iter()
                    .any(|r| algorithm.verify(*identifier, &policy.initiator.secret, challenge, r))
        });
        assert!(
            proved,
            "{} completed a {:?} login to {:?} as CHAP user {:?} without answering the challenge with that \
             policy's secret (identity {:?})",
            result.initiator_name,
            result.kind,
            result.target_name,
            policy.initiator.user,
            chap.identity
        );
    }
    let p = &result.params;
    assert!((512..=(1 << 24) - 1).contains(&p.max_xmit_data_segment_length));
    assert_eq!(p.max_recv_data_segment_length, settings.max_recv_data_segment_length);
    assert!(p.max_burst_length >= 512 && p.max_burst_length <= settings.max_burst_length.max(262_144));
    assert!(p.first_burst_length <= p.max_burst_length, "FirstBurstLength above MaxBurstLength");
    assert!(p.first_burst_length <= settings.first_burst_length.max(65_536));
    assert!((1..=settings.max_outstanding_r2t.max(1)).contains(&p.max_outstanding_r2t));
    assert_eq!(p.error_recovery_level, 0);
}

fn check_text(bytes: &[u8]) {
    if let Ok(pairs) = TextPairs::parse(bytes) {
        let encoded = pairs.encode();
        assert_eq!(TextPairs::parse(&encoded).as_ref(), Ok(&pairs), "TextPairs round trip");
        for (key, value) in pairs.iter() {
            assert!(!key.is_empty() && key.len() <= lunlock_iscsi::text::MAX_KEY_LEN);
            assert!(value.len() <= lunlock_iscsi::text::MAX_VALUE_LEN);
            assert!(!key.contains('\0') && !value.contains('\0'));
        }
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Some(decoded) = chap::decode_binary(text) {
            let encoded = chap::encode_binary(&decoded);
            assert_eq!(chap::decode_binary(&encoded), Some(decoded), "binary value round trip");
        }
        let _ = Algorithm::choose(text);
    }
}
