//! A minimal raw initiator over real TCP, for tests that must send PDUs the project's own initiator never would.

use lunlock_iscsi::message::{
    encode_lun, DataIn, LoginRequest, LoginResponse, ScsiCommand, ScsiResponse,
};
use lunlock_iscsi::pdu::{self, Digests, Opcode, Pdu};
use lunlock_iscsi::TextPairs;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The embedded default target's name.
pub const TARGET: &str = "iqn.2026-11.io.lunlock:default";

/// A minimal raw initiator: enough to drive the target PDU by PDU.
pub struct Raw {
    pub stream: TcpStream,
    buffer: Vec<u8>,
    pub digests: Digests,
    pub cmd_sn: u32,
    pub itt: u32,
}

impl Raw {
    pub async fn connect(address: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(address).await.unwrap(),
            buffer: Vec::new(),
            digests: Digests::default(),
            cmd_sn: 1,
            itt: 1,
        }
    }

    pub async fn send(&mut self, pdu: &Pdu) {
        self.stream
            .write_all(&pdu.to_bytes(self.digests))
            .await
            .unwrap();
    }

    /// The next PDU, or None when the target closed the connection (or went silent for 5 s).
    pub async fn receive(&mut self) -> Option<Pdu> {
        loop {
            if let Some((pdu, used)) = pdu::decode(&self.buffer, self.digests, 1 << 24).unwrap() {
                self.buffer.drain(..used);
                return Some(pdu);
            }
            let mut chunk = vec![0u8; 65536];
            let read = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if read == 0 {
                return None;
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }

    pub async fn login(&mut self, pairs: &[(&str, &str)], isid: [u8; 6]) -> LoginResponse {
        self.login_stage(1, 3, true, pairs, isid)
            .await
            .expect("login response")
    }

    /// One Login Request from stage `current` (toward `next` when `transit`), and its response; None when the
    /// target closed the connection instead.
    pub async fn login_stage(
        &mut self,
        current: u8,
        next: u8,
        transit: bool,
        pairs: &[(&str, &str)],
        isid: [u8; 6],
    ) -> Option<LoginResponse> {
        let mut text = TextPairs::new();
        for (key, value) in pairs {
            text.push(*key, *value);
        }
        let request = LoginRequest {
            transit,
            current_stage: current,
            next_stage: if transit { next } else { 0 },
            isid,
            itt: 0,
            cmd_sn: self.cmd_sn,
            data: text.encode(),
            ..Default::default()
        };
        self.send(&request.to_pdu()).await;
        Some(LoginResponse::from_pdu(&self.receive().await?))
    }

    pub async fn login_normal(
        &mut self,
        initiator: &str,
        isid: [u8; 6],
        digests: bool,
    ) -> LoginResponse {
        let response = self
            .try_login_normal(TARGET, initiator, isid, digests)
            .await;
        assert_eq!(response.status_class, 0, "login failed: {response:?}");
        response
    }

    /// A normal session to `target` with InitialR2T=No and ImmediateData=Yes, in one Login Request; the response
    /// whatever its status.
    pub async fn try_login_normal(
        &mut self,
        target: &str,
        initiator: &str,
        isid: [u8; 6],
        digests: bool,
    ) -> LoginResponse {
        let digest = if digests { "CRC32C" } else { "None" };
        let response = self
            .login(
                &[
                    ("InitiatorName", initiator),
                    ("TargetName", target),
                    ("SessionType", "Normal"),
                    ("HeaderDigest", digest),
                    ("DataDigest", digest),
                    ("MaxRecvDataSegmentLength", "65536"),
                    ("InitialR2T", "No"),
                    ("ImmediateData", "Yes"),
                ],
                isid,
            )
            .await;
        if response.status_class == 0 {
            self.digests = Digests {
                header: digests,
                data: digests,
            };
        }
        response
    }

    pub async fn command(
        &mut self,
        cdb: &[u8],
        read_length: u32,
        write: Vec<u8>,
    ) -> (ScsiResponse, Vec<u8>) {
        let itt = self.itt;
        self.itt += 1;
        let command = ScsiCommand {
            immediate: false,
            final_bit: true,
            read: read_length > 0,
            write: !write.is_empty(),
            attribute: 1,
            lun: encode_lun(0),
            itt,
            expected_data_transfer_length: if write.is_empty() {
                read_length
            } else {
                write.len() as u32
            },
            cmd_sn: self.cmd_sn,
            exp_stat_sn: 0,
            cdb: cdb.to_vec(),
            data: write,
        };
        self.cmd_sn += 1;
        self.send(&command.to_pdu()).await;
        let mut data = Vec::new();
        loop {
            let pdu = self.receive().await.expect("a response");
            match pdu.opcode() {
                Some(Opcode::DataIn) => {
                    let data_in = DataIn::from_pdu(&pdu);
                    data.extend_from_slice(&data_in.data);
                    if let Some(status) = data_in.status {
                        let response = ScsiResponse {
                            status,
                            residual: data_in.residual,
                            itt,
                            ..Default::default()
                        };
                        return (response, data);
                    }
                }
                Some(Opcode::ScsiResponse) => return (ScsiResponse::from_pdu(&pdu), data),
                Some(Opcode::NopIn) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// TEST UNIT READY until the power-on unit attention is consumed.
    pub async fn clear_unit_attentions(&mut self) {
        for _ in 0..4 {
            let (response, _) = self.command(&[0; 6], 0, Vec::new()).await;
            if response.status == 0 {
                return;
            }
        }
        panic!("unit attentions never cleared");
    }
}

pub fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut cdb = vec![0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

pub fn write10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut cdb = read10(lba, blocks);
    cdb[0] = 0x2A;
    cdb
}

pub fn blank() -> ScsiCommand {
    ScsiCommand {
        immediate: false,
        final_bit: false,
        read: false,
        write: false,
        attribute: 1,
        lun: encode_lun(0),
        itt: 0,
        expected_data_transfer_length: 0,
        cmd_sn: 0,
        exp_stat_sn: 0,
        cdb: vec![0; 16],
        data: vec![],
    }
}

/// A SCSI Response as (ITT, status, sense key, ASC, ASCQ) from fixed-format sense, for one assert.
pub fn status_and_sense(response: &ScsiResponse) -> (u32, u8, u8, u8, u8) {
    let sense = |i: usize| response.sense.get(i).copied().unwrap_or(0);
    (
        response.itt,
        response.status,
        sense(2) & 0x0F,
        sense(12),
        sense(13),
    )
}
