//! CHAP over real TCP (RFC 7143 12.1.3): a target configured with `chap_user`/`chap_secret_file` admits the right
//! secret and refuses a wrong one with Authentication failure (0201h); mutual CHAP proves the target to the
//! initiator; discovery sessions can demand CHAP too; challenges are never repeated; repeated failures from one
//! address are slowed without locking out a neighbour that knows the secret.

mod support;

use lunlock_initiator::{
    ChapCredentials, Credentials, DataDirection, InitiatorError, LoginOptions, Session,
};
use lunlock_iscsi::chap;
use lunlock_iscsi::message::{LoginRequest, LoginResponse};
use lunlock_iscsi::pdu::{self, Digests};
use lunlock_iscsi::TextPairs;
use lunlock_server::RunningTarget;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TARGET: &str = "iqn.2026-12.io.lunlock:chap";
const INITIATOR: &str = "iqn.2026-12.test:chap-host";
const USER: &str = "chap-host";
const SECRET: &[u8] = b"initiator-secret-1";
const TARGET_USER: &str = "lunlock-array";
const TARGET_SECRET: &[u8] = b"the-target-proves-itself";

fn secret_file(dir: &Path, name: &str, secret: &[u8]) {
    let path = dir.join(name);
    let mut contents = secret.to_vec();
    contents.push(b'\n');
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A target whose one LUN needs CHAP as USER (with mutual CHAP as TARGET_USER), and whose discovery sessions
/// need CHAP as USER too when `discovery` is set.
async fn start(dir: &Path, discovery: bool) -> RunningTarget {
    secret_file(dir, "initiator.secret", SECRET);
    secret_file(dir, "target.secret", TARGET_SECRET);
    let discovery_table = if discovery {
        format!("[discovery]\nchap_user = \"{USER}\"\nchap_secret_file = \"initiator.secret\"\n")
    } else {
        String::new()
    };
    let config = format!(
        "listen = [\"127.0.0.1:0\"]\n{discovery_table}\n[[target]]\nname = \"{TARGET}\"\n\
         chap_user = \"{USER}\"\nchap_secret_file = \"initiator.secret\"\n\
         mutual_chap_user = \"{TARGET_USER}\"\nmutual_chap_secret_file = \"target.secret\"\n\
         [[target.lun]]\nid = 0\nsize = \"1M\"\n"
    );
    let path = dir.join("lunlock.toml");
    std::fs::write(&path, config).unwrap();
    support::start_from_file(path).await
}

fn credentials(secret: &[u8], target: Option<&[u8]>) -> ChapCredentials {
    ChapCredentials {
        initiator: Credentials {
            user: USER.into(),
            secret: secret.to_vec(),
        },
        target: target.map(|secret| Credentials {
            user: TARGET_USER.into(),
            secret: secret.to_vec(),
        }),
    }
}

async fn login(
    target: &RunningTarget,
    chap: Option<ChapCredentials>,
) -> Result<Session, InitiatorError> {
    let mut options = LoginOptions::new(INITIATOR, TARGET);
    options.chap = chap;
    Session::login(target.local_addrs()[0], &options).await
}

/// A WRITE and a READ of block 0 that must both succeed.
async fn round_trip(session: &Session, byte: u8) {
    let _ = session.execute(0, &[0u8; 6], DataDirection::None).await; // POWER ON unit attention
    let mut write = [0u8; 10];
    write[0] = 0x2A;
    write[8] = 1;
    let outcome = session
        .execute(0, &write, DataDirection::Write(vec![byte; 512]))
        .await
        .unwrap();
    assert!(outcome.is_good(), "{outcome:?}");
    let mut read = write;
    read[0] = 0x28;
    let outcome = session
        .execute(0, &read, DataDirection::Read(512))
        .await
        .unwrap();
    assert!(
        outcome.is_good() && outcome.data_in == vec![byte; 512],
        "{outcome:?}"
    );
}

fn is_authentication_failure(result: &Result<Session, InitiatorError>) -> bool {
    matches!(
        result,
        Err(InitiatorError::LoginRejected {
            class: 2,
            detail: 1
        })
    )
}

#[tokio::test]
async fn the_right_secret_is_admitted_and_a_wrong_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), false).await;
    let session = login(&target, Some(credentials(SECRET, None)))
        .await
        .expect("the right secret logs in");
    round_trip(&session, 0x11).await;

    let wrong = login(&target, Some(credentials(b"initiator-secret-2", None))).await;
    assert!(is_authentication_failure(&wrong), "{:?}", wrong.err());
    let none = login(&target, None).await;
    assert!(is_authentication_failure(&none), "{:?}", none.err());
    let mut stranger = credentials(SECRET, None);
    stranger.initiator.user = "someone-else".into();
    let unknown_user = login(&target, Some(stranger)).await;
    assert!(
        is_authentication_failure(&unknown_user),
        "{:?}",
        unknown_user.err()
    );
    // The refusals cost nothing to the session that authenticated.
    round_trip(&session, 0x22).await;
}

#[tokio::test]
async fn mutual_chap_proves_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), false).await;
    let session = login(&target, Some(credentials(SECRET, Some(TARGET_SECRET))))
        .await
        .expect("mutual CHAP succeeds when both secrets are right");
    round_trip(&session, 0x33).await;
    // An initiator that expects another target secret finds that this target cannot prove itself.
    let impostor = login(
        &target,
        Some(credentials(SECRET, Some(b"what-the-real-array-knows"))),
    )
    .await;
    assert!(
        matches!(impostor, Err(InitiatorError::Chap(_))),
        "{:?}",
        impostor.err()
    );
}

#[tokio::test]
async fn discovery_can_demand_chap() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), true).await;
    let address = target.local_addrs()[0];
    let anonymous = Session::discover(address, INITIATOR).await;
    assert!(
        matches!(
            anonymous,
            Err(InitiatorError::LoginRejected {
                class: 2,
                detail: 1
            })
        ),
        "{anonymous:?}"
    );
    let mut options = LoginOptions::new(INITIATOR, "");
    options.chap = Some(credentials(SECRET, None));
    let targets = Session::discover_with(address, &options).await.unwrap();
    assert_eq!(
        targets
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>(),
        [TARGET]
    );
}

/// The security stage by hand, as far as the target's challenge: returns CHAP_C.
async fn challenge_of(address: SocketAddr, isid: [u8; 6]) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut buffer = Vec::new();
    let exchange = |pairs: &[(&str, &str)]| {
        let mut text = TextPairs::new();
        for (key, value) in pairs {
            text.push(*key, *value);
        }
        LoginRequest {
            transit: false,
            current_stage: 0,
            next_stage: 1,
            isid,
            data: text.encode(),
            ..Default::default()
        }
        .to_pdu()
        .to_bytes(Digests::default())
    };
    let first = exchange(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("SessionType", "Normal"),
        ("AuthMethod", "CHAP"),
    ]);
    let second = exchange(&[("CHAP_A", "5")]);
    let mut last = None;
    for request in [first, second] {
        stream.write_all(&request).await.unwrap();
        let response = loop {
            if let Some((pdu, used)) = pdu::decode(&buffer, Digests::default(), 1 << 20).unwrap() {
                buffer.drain(..used);
                break LoginResponse::from_pdu(&pdu);
            }
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await.unwrap();
            assert!(read > 0, "the target closed the login");
            buffer.extend_from_slice(&chunk[..read]);
        };
        assert_eq!(response.status_class, 0, "{response:?}");
        assert!(
            !response.transit,
            "the target left the security stage early"
        );
        last = Some(TextPairs::parse(&response.data).unwrap());
    }
    let answer = last.unwrap();
    assert_eq!(answer.get("CHAP_A"), Some("5"));
    chap::decode_binary(answer.get("CHAP_C").unwrap()).unwrap()
}

#[tokio::test]
async fn a_thousand_logins_never_see_the_same_challenge() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), false).await;
    let mut seen = HashSet::new();
    for i in 0..1000u32 {
        let bytes = i.to_be_bytes();
        let challenge = challenge_of(
            target.local_addrs()[0],
            [0x80, 0, bytes[1], bytes[2], bytes[3], 1],
        )
        .await;
        assert!(challenge.len() >= 16, "{} bytes", challenge.len());
        assert!(seen.insert(challenge), "challenge repeated at login {i}");
    }
}

#[tokio::test]
async fn repeated_failures_are_slowed_but_the_right_secret_still_gets_in() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), false).await;
    let mut last_failure = Duration::ZERO;
    for _ in 0..4 {
        let started = Instant::now();
        let wrong = login(&target, Some(credentials(b"guess-guess-guess", None))).await;
        assert!(is_authentication_failure(&wrong), "{:?}", wrong.err());
        last_failure = started.elapsed();
    }
    // The fourth failure in a row from this address waits a second (250, 500, then 1000 ms) before its answer.
    assert!(
        last_failure >= Duration::from_millis(1000),
        "the fourth failure was answered after {last_failure:?}"
    );
    // Another initiator behind the same address, with the right secret, is not locked out.
    let session = login(&target, Some(credentials(SECRET, None)))
        .await
        .expect("the right secret still logs in");
    round_trip(&session, 0x44).await;
}
