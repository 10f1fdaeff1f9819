//! A connection closed by its peer is an I_T nexus loss (SAM-5 6.3.4; RFC 7143 6.3.5 with DefaultTime2Retain=0),
//! and the target sees it before it refuses a later command because of that nexus: what libiscsi's
//! Sanitize.Reset depends on after Sanitize.Reservations closes its second connection while holding RESERVE(6).

mod support;

use lunlock_initiator::{DataDirection, LoginOptions, Session};
use lunlock_scsi::cdb::Command;
use lunlock_server::RunningTarget;
use std::net::Shutdown;

const TARGET: &str = "iqn.2026-11.io.lunlock:default";
const GOOD: u8 = 0x00;
const RESERVE_6: [u8; 6] = [0x16, 0, 0, 0, 0, 0];

/// A session whose TCP connection the test can close without a logout, as an initiator that dies does.
async fn login_closable(target: &RunningTarget, initiator: &str) -> (Session, std::net::TcpStream) {
    let socket = std::net::TcpStream::connect(target.local_addrs()[0]).unwrap();
    let closer = socket.try_clone().unwrap();
    socket.set_nonblocking(true).unwrap();
    let stream = tokio::net::TcpStream::from_std(socket).unwrap();
    let session = Session::login_over(stream, &LoginOptions::new(initiator, TARGET))
        .await
        .unwrap();
    let _ = session.execute(0, &[0u8; 6], DataDirection::None).await; // the POWER ON unit attention
    (session, closer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_of_a_connection_its_peer_closed_never_conflicts_with_a_later_command() {
    let dir = tempfile::tempdir().unwrap();
    let target = support::start(dir.path()).await;
    let survivor = support::login(&target, TARGET, "iqn.2026-11.test:survivor").await;
    let read = Command::read_16(0, 1, false).encode();
    // The close and the next command race inside the target unless it settles the close first; many rounds make
    // a lost race all but certain to show.
    for round in 0..200 {
        let (holder, closer) = login_closable(&target, "iqn.2026-11.test:holder").await;
        let reserved = holder
            .execute(0, &RESERVE_6, DataDirection::None)
            .await
            .unwrap();
        assert_eq!(reserved.status, GOOD, "round {round}: RESERVE(6)");
        closer.shutdown(Shutdown::Both).unwrap();
        let outcome = survivor
            .execute(0, &read, DataDirection::Read(512))
            .await
            .unwrap();
        assert_eq!(
            outcome.status, GOOD,
            "round {round}: a READ sent after the holder's connection closed got status {:#04x}",
            outcome.status
        );
        drop(holder);
    }
}
