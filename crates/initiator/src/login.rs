//! The initiator's side of login (RFC 7143 6, 11.12, 11.13) and of operational key negotiation (RFC 7143 13).
//!
//! The login walks the security stage (CSG 0, offering AuthMethod=None) and then the operational stage (CSG 1)
//! to full feature phase (NSG 3). Every answer the target gives is folded into [`SessionParams`] with that key's
//! result function (Min, Max, AND, OR, or a choice from our list), so a target that answers outside what we
//! offered is caught here rather than trusted. Keys the target proposes on its own get an answer in the next
//! request of the same stage (RFC 7143 6.2.1).
//!
//! Invariants: ISID, TSIH, CID and ITT stay the same in every request of one login (RFC 7143 6.1.2); the number
//! of exchanges is bounded by [`MAX_LOGIN_EXCHANGES`].

use crate::chap::{self, ChapClient, Next};
use crate::{read_pdu, InitiatorError, LoginOptions};
use lunlock_iscsi::message::{LoginRequest, LoginResponse};
use lunlock_iscsi::pdu::{Digests, Opcode};
use lunlock_iscsi::{SessionParams, TextPairs};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// What we accept per PDU: our MaxRecvDataSegmentLength declaration (RFC 7143 13.12).
pub const OUR_MAX_RECV_DATA_SEGMENT_LENGTH: u32 = 262_144;
/// Our MaxBurstLength proposal (RFC 7143 13.13).
pub const OUR_MAX_BURST_LENGTH: u32 = 1_048_576;
/// Our FirstBurstLength proposal (RFC 7143 13.14).
pub const OUR_FIRST_BURST_LENGTH: u32 = 262_144;
/// Our MaxOutstandingR2T proposal (RFC 7143 13.17).
pub const OUR_MAX_OUTSTANDING_R2T: u32 = 8;
/// Login requests we send before giving up on a target that never reaches full feature phase.
pub const MAX_LOGIN_EXCHANGES: usize = 16;
/// Largest login text we collect over continued responses (C bit), RFC 7143 11.13.
const MAX_LOGIN_TEXT_BYTES: usize = 64 * 1024;

const SECURITY_STAGE: u8 = 0;
const OPERATIONAL_STAGE: u8 = 1;
const FULL_FEATURE_PHASE: u8 = 3;

/// The kind of session to open (RFC 7143 13.21).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SessionKind {
    Normal,
    Discovery,
}

/// The keys of the security stage: who we are, whom we want, and the authentication methods we accept
/// (RFC 7143 12.1): `None`, or CHAP as [`ChapClient::auth_methods`] says.
fn security_keys(options: &LoginOptions, kind: SessionKind, auth_methods: &str) -> TextPairs {
    let mut pairs = TextPairs::new();
    pairs.push("InitiatorName", options.initiator_name.as_str());
    match kind {
        SessionKind::Normal => {
            pairs.push("TargetName", options.target_name.as_str());
            pairs.push("SessionType", "Normal");
        }
        SessionKind::Discovery => pairs.push("SessionType", "Discovery"),
    }
    pairs.push("AuthMethod", auth_methods);
    pairs
}

/// Our operational proposal (RFC 7143 13). A discovery session offers only the keys that matter to it.
fn operational_proposal(options: &LoginOptions, kind: SessionKind) -> TextPairs {
    let digest = |on: bool| if on { "CRC32C,None" } else { "None" };
    let mut pairs = TextPairs::new();
    pairs.push("HeaderDigest", digest(options.header_digest));
    pairs.push("DataDigest", digest(options.data_digest));
    pairs.push(
        "MaxRecvDataSegmentLength",
        OUR_MAX_RECV_DATA_SEGMENT_LENGTH.to_string(),
    );
    if kind == SessionKind::Discovery {
        return pairs;
    }
    pairs.push("MaxConnections", "1");
    pairs.push("InitialR2T", "No");
    pairs.push("ImmediateData", "Yes");
    pairs.push("MaxBurstLength", OUR_MAX_BURST_LENGTH.to_string());
    pairs.push("FirstBurstLength", OUR_FIRST_BURST_LENGTH.to_string());
    pairs.push("MaxOutstandingR2T", OUR_MAX_OUTSTANDING_R2T.to_string());
    pairs.push("DataPDUInOrder", "Yes");
    pairs.push("DataSequenceInOrder", "Yes");
    pairs.push("ErrorRecoveryLevel", "0");
    pairs.push("DefaultTime2Wait", "2");
    pairs.push("DefaultTime2Retain", "0");
    pairs
}

/// The parameters we start from: the RFC defaults, with our own receive limit declared.
pub(crate) fn initial_params() -> SessionParams {
    SessionParams {
        max_recv_data_segment_length: OUR_MAX_RECV_DATA_SEGMENT_LENGTH,
        ..SessionParams::default()
    }
}

fn number(key: &str, value: &str, low: u32, high: u32) -> Result<u32, InitiatorError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (low..=high).contains(n))
        .ok_or_else(|| InitiatorError::Protocol(format!("bad answer {key}={value:?}")))
}

fn boolean(key: &str, value: &str) -> Result<bool, InitiatorError> {
    match value {
        "Yes" => Ok(true),
        "No" => Ok(false),
        _ => Err(InitiatorError::Protocol(format!(
            "bad answer {key}={value:?}"
        ))),
    }
}

const SEGMENT_LIMITS: (u32, u32) = (512, (1 << 24) - 1);

/// Folds one answer to a key we offered into `params` (RFC 7143 13, each key's result function). "Reject",
/// "Irrelevant" and "NotUnderstood" leave the key at its default (RFC 7143 6.2, 6.2.1).
pub(crate) fn fold_answer(
    params: &mut SessionParams,
    key: &str,
    value: &str,
    offered: &str,
) -> Result<(), InitiatorError> {
    if matches!(value, "Reject" | "Irrelevant" | "NotUnderstood") {
        return Ok(());
    }
    let (low, high) = SEGMENT_LIMITS;
    match key {
        "HeaderDigest" | "DataDigest" | "AuthMethod" => {
            // A list key: the answer must be one of the values we offered (RFC 7143 6.2.1).
            if !offered.split(',').any(|v| v == value) {
                return Err(InitiatorError::Protocol(format!(
                    "the target chose {key}={value}, which we did not offer ({offered})"
                )));
            }
            let crc = value == "CRC32C";
            match key {
                "HeaderDigest" => params.header_digest = crc,
                "DataDigest" => params.data_digest = crc,
                _ => {}
            }
        }
        "MaxBurstLength" => {
            params.max_burst_length = number(key, value, low, high)?.min(OUR_MAX_BURST_LENGTH)
        }
        "FirstBurstLength" => {
            params.first_burst_length = number(key, value, low, high)?.min(OUR_FIRST_BURST_LENGTH)
        }
        "MaxOutstandingR2T" => {
            params.max_outstanding_r2t = number(key, value, 1, 65535)?.min(OUR_MAX_OUTSTANDING_R2T)
        }
        // AND with our Yes (13.11) and OR with our No (13.10): the result is the target's value.
        "ImmediateData" => params.immediate_data = boolean(key, value)?,
        "InitialR2T" => params.initial_r2t = boolean(key, value)?,
        // OR with our Yes (13.18, 13.19): always Yes, whatever the target says.
        "DataPDUInOrder" | "DataSequenceInOrder" => {
            boolean(key, value)?;
        }
        "ErrorRecoveryLevel" => {
            // Min with our 0 (13.20).
            number(key, value, 0, 2)?;
            params.error_recovery_level = 0;
        }
        "MaxConnections" => {
            number(key, value, 1, 65535)?;
        }
        "DefaultTime2Wait" | "DefaultTime2Retain" => {
            number(key, value, 0, 3600)?;
        }
        _ => {}
    }
    Ok(())
}

/// Handles one key in a login response: folds answers to our offers, notes the target's declarations, and
/// returns the answer we owe when the target proposed a key we did not offer.
fn handle_key(
    params: &mut SessionParams,
    offers: &TextPairs,
    key: &str,
    value: &str,
) -> Result<Option<(String, String)>, InitiatorError> {
    let (low, high) = SEGMENT_LIMITS;
    if key == "MaxRecvDataSegmentLength" {
        // Declarative (13.12): the target's own limit, which bounds what we send; ours was a declaration too, so
        // this is never an answer to our offer.
        params.max_xmit_data_segment_length = number(key, value, low, high)?;
        return Ok(None);
    }
    if let Some(offered) = offers.get(key) {
        fold_answer(params, key, value, offered)?;
        return Ok(None);
    }
    let answer = match key {
        // Declarations only the target makes (13.7-13.9); nothing to answer.
        "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" | "AuthMethod" => return Ok(None),
        "HeaderDigest" | "DataDigest" => {
            // The target proposes; we accept None only unless asked otherwise by our options (no offer made).
            let choice = if value.split(',').any(|v| v == "None") {
                "None"
            } else {
                "Reject"
            };
            choice.to_string()
        }
        "MaxBurstLength"
        | "FirstBurstLength"
        | "MaxOutstandingR2T"
        | "ErrorRecoveryLevel"
        | "ImmediateData"
        | "InitialR2T"
        | "DataPDUInOrder"
        | "DataSequenceInOrder"
        | "MaxConnections"
        | "DefaultTime2Wait"
        | "DefaultTime2Retain" => {
            // Offer our own value back; the result function of each key then holds on both sides.
            let ours = operational_default(key);
            fold_answer(params, key, ours, ours)?;
            ours.to_string()
        }
        _ => "NotUnderstood".to_string(),
    };
    Ok(Some((key.to_string(), answer)))
}

/// Our value for a key, used when the target raises a key on its own.
fn operational_default(key: &str) -> &'static str {
    match key {
        "MaxBurstLength" => "1048576",
        "FirstBurstLength" => "262144",
        "MaxOutstandingR2T" => "8",
        "ErrorRecoveryLevel" => "0",
        "ImmediateData" => "Yes",
        "InitialR2T" => "No",
        "DataPDUInOrder" | "DataSequenceInOrder" => "Yes",
        "MaxConnections" => "1",
        "DefaultTime2Wait" => "2",
        _ => "0",
    }
}

fn status_error(response: &LoginResponse) -> Option<InitiatorError> {
    (response.status_class != 0).then_some(InitiatorError::LoginRejected {
        class: response.status_class,
        detail: response.status_detail,
    })
}

/// Runs the whole login phase on a fresh connection and returns the final response (its ExpCmdSN, MaxCmdSN and
/// StatSN seed the session) and the negotiated parameters.
pub(crate) async fn login_exchange<R, W>(
    reader: &mut R,
    writer: &mut W,
    buffer: &mut Vec<u8>,
    options: &LoginOptions,
    kind: SessionKind,
) -> Result<(LoginResponse, SessionParams), InitiatorError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut params = initial_params();
    let mut stage = SECURITY_STAGE;
    let mut chap = options.chap.as_ref().map(ChapClient::new);
    let auth_methods = chap.as_ref().map_or("None", ChapClient::auth_methods);
    let mut offers = security_keys(options, kind, auth_methods);
    let mut request = LoginRequest {
        // With CHAP the security stage takes several exchanges, so we do not ask to leave it yet.
        transit: chap.is_none(),
        continue_bit: false,
        current_stage: SECURITY_STAGE,
        next_stage: OPERATIONAL_STAGE,
        version_max: 0,
        version_min: 0,
        isid: options.isid,
        tsih: 0,
        itt: 0,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
        data: offers.encode(),
    };
    let mut text = Vec::new();
    for _ in 0..MAX_LOGIN_EXCHANGES {
        writer
            .write_all(&request.to_pdu().to_bytes(Digests::default()))
            .await?;
        let pdu = read_pdu(reader, buffer, Digests::default()).await?;
        if pdu.opcode() != Some(Opcode::LoginResponse) {
            return Err(InitiatorError::Protocol(format!(
                "expected a login response, got {:?}",
                pdu.opcode()
            )));
        }
        let response = LoginResponse::from_pdu(&pdu);
        if let Some(error) = status_error(&response) {
            return Err(error);
        }
        if response.current_stage != stage || response.itt != request.itt {
            return Err(InitiatorError::Protocol(format!(
                "login response for stage {} (ITT {:#x}) while in stage {stage}",
                response.current_stage, response.itt
            )));
        }
        request.exp_stat_sn = response.sequence.stat_sn.wrapping_add(1);
        request.tsih = response.tsih;
        text.extend_from_slice(&response.data);
        if text.len() > MAX_LOGIN_TEXT_BYTES {
            return Err(InitiatorError::Protocol("login text too long".into()));
        }
        if response.continue_bit {
            // RFC 7143 11.13: more text follows; ask for it with an empty request that does not transit.
            request.transit = false;
            request.data.clear();
            continue;
        }
        let answers = TextPairs::parse(&std::mem::take(&mut text))
            .map_err(|e| InitiatorError::Protocol(e.to_string()))?;
        let authenticating = stage == SECURITY_STAGE && chap.as_ref().is_some_and(|c| !c.done());
        let mut owed = TextPairs::new();
        for (key, value) in answers.iter() {
            if authenticating && chap::is_security_key(key) {
                continue;
            }
            if let Some((key, answer)) = handle_key(&mut params, &offers, key, value)? {
                owed.push(key, answer);
            }
        }
        if let Some(client) = chap.as_mut().filter(|_| authenticating) {
            if let Next::Send { keys, transit } =
                client.advance(&answers).map_err(InitiatorError::Chap)?
            {
                if response.transit {
                    return Err(InitiatorError::Protocol(
                        "the target left the security stage before CHAP finished".into(),
                    ));
                }
                offers = keys;
                for (key, value) in owed.iter() {
                    offers.push(key, value);
                }
                request.transit = transit;
                request.data = offers.encode();
                continue;
            }
        }
        // FirstBurstLength never exceeds MaxBurstLength (13.14).
        params.first_burst_length = params.first_burst_length.min(params.max_burst_length);
        if response.transit && response.next_stage == FULL_FEATURE_PHASE {
            return Ok((response, params));
        }
        if response.transit && stage == SECURITY_STAGE && response.next_stage == OPERATIONAL_STAGE {
            stage = OPERATIONAL_STAGE;
            offers = operational_proposal(options, kind);
            for (key, value) in owed.iter() {
                offers.push(key, value);
            }
            request.current_stage = OPERATIONAL_STAGE;
            request.next_stage = FULL_FEATURE_PHASE;
        } else if response.transit {
            return Err(InitiatorError::Protocol(format!(
                "the target moved from stage {stage} to {}",
                response.next_stage
            )));
        } else {
            offers = owed;
            request.next_stage = if stage == SECURITY_STAGE {
                OPERATIONAL_STAGE
            } else {
                FULL_FEATURE_PHASE
            };
        }
        request.transit = true;
        request.data = offers.encode();
    }
    Err(InitiatorError::Protocol(
        "the target never completed the login".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposal() -> TextPairs {
        operational_proposal(
            &LoginOptions::new("iqn.x:i", "iqn.x:t"),
            SessionKind::Normal,
        )
    }

    #[test]
    fn answers_fold_with_each_keys_result_function() {
        let offers = proposal();
        let mut params = initial_params();
        for (key, value) in [
            ("MaxRecvDataSegmentLength", "65536"),
            ("MaxBurstLength", "16777215"),
            ("FirstBurstLength", "4096"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
            ("MaxOutstandingR2T", "1"),
            ("HeaderDigest", "None"),
            ("DataPDUInOrder", "Yes"),
        ] {
            assert_eq!(handle_key(&mut params, &offers, key, value).unwrap(), None);
        }
        // MaxRecvDataSegmentLength is the target's declaration: it bounds what we send, not what we accept.
        assert_eq!(params.max_xmit_data_segment_length, 65536);
        assert_eq!(
            params.max_recv_data_segment_length,
            OUR_MAX_RECV_DATA_SEGMENT_LENGTH
        );
        // Min: a target may not raise MaxBurstLength above our offer.
        assert_eq!(params.max_burst_length, OUR_MAX_BURST_LENGTH);
        assert_eq!(params.first_burst_length, 4096);
        assert_eq!(params.max_outstanding_r2t, 1);
        assert!(params.initial_r2t && !params.immediate_data && !params.header_digest);
    }

    #[test]
    fn answers_outside_the_offer_are_protocol_errors() {
        let offers = proposal();
        let mut params = initial_params();
        for (key, value) in [
            ("HeaderDigest", "CRC32C"), // we offered None only
            ("MaxBurstLength", "lots"),
            ("MaxBurstLength", "100"), // below 512
            ("InitialR2T", "Maybe"),
            ("ErrorRecoveryLevel", "7"),
        ] {
            assert!(
                handle_key(&mut params, &offers, key, value).is_err(),
                "{key}={value}"
            );
        }
    }

    #[test]
    fn rejected_and_irrelevant_answers_keep_defaults() {
        let offers = proposal();
        let mut params = initial_params();
        handle_key(&mut params, &offers, "MaxBurstLength", "Irrelevant").unwrap();
        handle_key(&mut params, &offers, "InitialR2T", "Reject").unwrap();
        assert_eq!(params, initial_params());
    }

    #[test]
    fn target_proposals_get_answers() {
        let offers = proposal();
        let mut params = initial_params();
        assert_eq!(
            handle_key(&mut params, &offers, "X-com.example.Foo", "1").unwrap(),
            Some(("X-com.example.Foo".to_string(), "NotUnderstood".to_string()))
        );
        assert_eq!(
            handle_key(&mut params, &TextPairs::new(), "DefaultTime2Wait", "5").unwrap(),
            Some(("DefaultTime2Wait".to_string(), "2".to_string()))
        );
        assert_eq!(
            handle_key(&mut params, &offers, "TargetPortalGroupTag", "1").unwrap(),
            None
        );
    }

    #[test]
    fn discovery_offers_no_session_keys() {
        let pairs = operational_proposal(&LoginOptions::new("iqn.x:i", ""), SessionKind::Discovery);
        assert!(pairs.get("MaxBurstLength").is_none());
        assert_eq!(pairs.get("HeaderDigest"), Some("None"));
        let security = security_keys(
            &LoginOptions::new("iqn.x:i", ""),
            SessionKind::Discovery,
            "None",
        );
        assert_eq!(security.get("SessionType"), Some("Discovery"));
        assert!(security.get("TargetName").is_none());
        assert_eq!(security.get("AuthMethod"), Some("None"));
    }
}
