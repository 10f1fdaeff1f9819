//! The client commands: discover, inquiry, readcap, read, write. Each logs in with lunlock's initiator, runs its
//! commands and logs out. SCSI errors are printed decoded, as sg3_utils does.

use crate::progress::Progress;
use crate::{ClientOptions, Command, OneShotOptions};
use lunlock_initiator::commands::inquiry_cdb;
use lunlock_initiator::TargetPortGroupDescriptor;
use lunlock_initiator::{status, DataDirection, IscsiUrl, LoginOptions, ScsiOutcome, Session};
use lunlock_scsi::cdb::{BlockCount, Command as Cdb, Lba, TargetPortGroupsFormat};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

/// Bytes per WRITE/READ command on long copies.
const COPY_CHUNK_BYTES: u64 = 1 << 20;
/// Commands in flight during long copies.
const COPY_QUEUE_DEPTH: usize = 8;

pub fn run(command: Command) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        match command {
            Command::Discover { url, client } => discover(&url, &client).await,
            Command::Inquiry { url, nexus } => inquiry(&url, &nexus).await,
            Command::Readcap { url, nexus } => readcap(&url, &nexus).await,
            Command::Read {
                url,
                lba,
                count,
                output,
                nexus,
            } => read(&url, &nexus, lba, count, output.as_deref()).await,
            Command::Write {
                url,
                input,
                lba,
                nexus,
            } => write(&url, &nexus, &input, lba).await,
            Command::Serve { .. } => unreachable!("serve is handled by main"),
            Command::Persist { .. } => unreachable!("persist is handled by main"),
        }
    })
}

async fn connect(url: &str, nexus: &OneShotOptions) -> Result<(Session, u64), String> {
    let (session, lun) = login(url, nexus).await?;
    clear_unit_attentions(&session, lun).await?;
    Ok((session, lun))
}

/// Logs in to the device a URL names as a one-shot command: the initiator name with `--isid` or the name's
/// default ISID, so that every one-shot command of one name is the same I_T nexus.
pub(crate) async fn login(url: &str, nexus: &OneShotOptions) -> Result<(Session, u64), String> {
    login_as(url, &nexus.client, nexus.isid()).await
}

/// Logs in with the client options (initiator name, digests) and `isid`: with the name, the initiator port
/// (RFC 7143 11.12.5). A second login with the same name and ISID would reinstate this session (RFC 7143 6.3.5).
pub(crate) async fn login_as(
    url: &str,
    client: &ClientOptions,
    isid: [u8; 6],
) -> Result<(Session, u64), String> {
    let url = IscsiUrl::parse(url).map_err(|e| e.to_string())?;
    let (target, lun) = url.device().map_err(|e| e.to_string())?;
    let address = url.address().map_err(|e| e.to_string())?;
    let mut options = LoginOptions::new(&client.initiator_name, target);
    options.header_digest = client.header_digest;
    options.data_digest = client.data_digest;
    options.isid = isid;
    options.chap = url.chap.clone();
    let session = Session::login(address, &options)
        .await
        .map_err(|e| format!("{address}: {e}"))?;
    Ok((session, lun))
}

/// TEST UNIT READY until pending unit attentions (power on, reset) are reported: a fresh nexus sees one.
async fn clear_unit_attentions(session: &Session, lun: u64) -> Result<(), String> {
    session
        .test_unit_ready(lun)
        .await
        .map_err(|e| e.to_string())
}

/// sg3_utils-style text for a failed command: status, sense key, and the ASC/ASCQ text.
pub fn describe_failure(command: &str, outcome: &ScsiOutcome) -> String {
    let status = status::status_name(outcome.status);
    let Some(sense) = outcome.sense_summary() else {
        return format!(
            "{command} failed: {status} (status {:#04x})",
            outcome.status
        );
    };
    format!(
        "{command} failed: {status}: {}, {}",
        status::sense_key_name(sense.key),
        status::additional_sense_text(sense.asc, sense.ascq)
    )
}

async fn checked(
    session: &Session,
    lun: u64,
    name: &str,
    cdb: &[u8],
    direction: DataDirection,
) -> Result<ScsiOutcome, String> {
    let outcome = session
        .execute(lun, cdb, direction)
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    if !outcome.is_good() {
        return Err(describe_failure(name, &outcome));
    }
    Ok(outcome)
}

async fn discover(url: &str, client: &ClientOptions) -> Result<(), String> {
    let url = IscsiUrl::parse(url).map_err(|e| e.to_string())?;
    let address = url.address().map_err(|e| e.to_string())?;
    let mut options = LoginOptions::new(&client.initiator_name, "");
    options.chap = url.chap.clone();
    let targets = Session::discover_with(address, &options)
        .await
        .map_err(|e| format!("{address}: {e}"))?;
    if targets.is_empty() {
        println!("no targets at {address} for {}", client.initiator_name);
    }
    for (name, portals) in targets {
        println!("{name}");
        for portal in portals {
            println!("  portal {portal}");
        }
    }
    Ok(())
}

fn ascii(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

async fn inquiry(url: &str, nexus: &OneShotOptions) -> Result<(), String> {
    let (session, lun) = connect(url, nexus).await?;
    let standard = checked(
        &session,
        lun,
        "INQUIRY",
        &inquiry_cdb(false, 0, 96),
        DataDirection::Read(96),
    )
    .await?
    .data_in;
    if standard.len() < 36 {
        return Err(format!("INQUIRY returned only {} bytes", standard.len()));
    }
    let device_type = standard[0] & 0x1F;
    println!(
        "device type: {device_type:#04x} ({})",
        device_type_name(device_type)
    );
    println!("vendor:      {}", ascii(&standard[8..16]));
    println!("product:     {}", ascii(&standard[16..32]));
    println!("revision:    {}", ascii(&standard[32..36]));
    let serial = checked(
        &session,
        lun,
        "INQUIRY VPD 0x80",
        &inquiry_cdb(true, 0x80, 255),
        DataDirection::Read(255),
    )
    .await?;
    if serial.data_in.len() > 4 {
        println!("serial:      {}", ascii(&serial.data_in[4..]));
    }
    let ids = checked(
        &session,
        lun,
        "INQUIRY VPD 0x83",
        &inquiry_cdb(true, 0x83, 1024),
        DataDirection::Read(1024),
    )
    .await?;
    for designator in designators(&ids.data_in) {
        println!("{designator}");
    }
    // TPGS (standard INQUIRY byte 5, bits 5..4): only a target that claims ALUA answers REPORT TARGET PORT GROUPS.
    if standard[5] & 0x30 != 0 {
        let report = session
            .report_target_port_groups(lun, TargetPortGroupsFormat::Extended)
            .await
            .map_err(|e| e.to_string())?;
        for group in &report.groups {
            println!("{}", target_port_group_line(group));
        }
    }
    let _ = session.logout().await;
    Ok(())
}

/// "port group 2: active/optimized, target ports 2" for one REPORT TARGET PORT GROUPS descriptor.
fn target_port_group_line(group: &TargetPortGroupDescriptor) -> String {
    let ports: Vec<String> = group
        .relative_target_ports
        .iter()
        .map(u16::to_string)
        .collect();
    format!(
        "port group {}: {}{}, target ports {}",
        group.id,
        asymmetric_access_state_name(group.asymmetric_access_state),
        if group.preferred { " (preferred)" } else { "" },
        ports.join(", ")
    )
}

/// ASYMMETRIC ACCESS STATE names (SPC-4 6.37 Table 307).
fn asymmetric_access_state_name(state: u8) -> &'static str {
    match state {
        0x0 => "active/optimized",
        0x1 => "active/non-optimized",
        0x2 => "standby",
        0x3 => "unavailable",
        0x4 => "logical block dependent",
        0xE => "offline",
        0xF => "transitioning",
        _ => "reserved state",
    }
}

/// Peripheral device type names (SPC-4 Table 146), for the common ones.
fn device_type_name(device_type: u8) -> &'static str {
    match device_type {
        0x00 => "direct access block device",
        0x01 => "sequential access device",
        0x05 => "CD/DVD device",
        0x0C => "storage array controller",
        0x0D => "enclosure services device",
        0x1F => "unknown or no device type",
        _ => "other",
    }
}

/// Readable lines for the designators of VPD page 0x83 (SPC-4 7.8.6).
fn designators(page: &[u8]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut at = 4;
    while at + 4 <= page.len() {
        let kind = page[at + 1] & 0x0F;
        let length = page[at + 3] as usize;
        let Some(value) = page.get(at + 4..at + 4 + length) else {
            break;
        };
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        lines.push(match kind {
            0x3 => format!("naa:         {hex}"),
            0x4 => format!(
                "target port: {}",
                u32::from_be_bytes(
                    value
                        .get(..4)
                        .and_then(|v| v.try_into().ok())
                        .unwrap_or([0; 4])
                )
            ),
            0x5 => format!(
                "port group:  {}",
                u32::from_be_bytes(
                    value
                        .get(..4)
                        .and_then(|v| v.try_into().ok())
                        .unwrap_or([0; 4])
                )
            ),
            0x8 => format!("scsi name:   {}", ascii(value).trim_end_matches('\0')),
            _ => format!("designator {kind:#x}: {hex}"),
        });
        at += 4 + length;
    }
    lines
}

struct Capacity {
    blocks: u64,
    block_size: u32,
    thin: bool,
}

/// READ CAPACITY(16), falling back to READ CAPACITY(10) on targets without it (the library decides).
async fn read_capacity(session: &Session, lun: u64) -> Result<Capacity, String> {
    let capacity = session
        .read_capacity(lun)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Capacity {
        blocks: capacity.blocks,
        block_size: capacity.block_size,
        thin: capacity.thin_provisioned,
    })
}

async fn readcap(url: &str, nexus: &OneShotOptions) -> Result<(), String> {
    let (session, lun) = connect(url, nexus).await?;
    let capacity = read_capacity(&session, lun).await?;
    println!("blocks:       {}", capacity.blocks);
    println!("block size:   {}", capacity.block_size);
    println!(
        "bytes:        {}",
        capacity.blocks * capacity.block_size as u64
    );
    println!(
        "provisioning: {}",
        if capacity.thin {
            "thin (UNMAP supported)"
        } else {
            "full"
        }
    );
    let _ = session.logout().await;
    Ok(())
}

fn check_range(capacity: &Capacity, lba: u64, blocks: u64) -> Result<(), String> {
    match lba.checked_add(blocks) {
        Some(end) if end <= capacity.blocks => Ok(()),
        _ => Err(format!(
            "blocks {lba}..{} do not fit in the LUN's {} blocks",
            lba.saturating_add(blocks),
            capacity.blocks
        )),
    }
}

async fn read(
    url: &str,
    nexus: &OneShotOptions,
    lba: u64,
    count: u64,
    output: Option<&Path>,
) -> Result<(), String> {
    let (session, lun) = connect(url, nexus).await?;
    let capacity = read_capacity(&session, lun).await?;
    check_range(&capacity, lba, count)?;
    let mut sink: Box<dyn Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?,
        )),
        None => Box::new(HexDump::new(lba * capacity.block_size as u64)),
    };
    let session = Arc::new(session);
    let block_size = capacity.block_size as u64;
    let chunk_blocks = (COPY_CHUNK_BYTES / block_size).max(1);
    let total_bytes = count * block_size;
    let progress = Progress::bytes(total_bytes, output.is_some());
    let mut in_flight = std::collections::VecDeque::new();
    let mut next = lba;
    let end = lba + count;
    while next < end || !in_flight.is_empty() {
        while next < end && in_flight.len() < COPY_QUEUE_DEPTH {
            let blocks = chunk_blocks.min(end - next);
            let session = Arc::clone(&session);
            let command = Cdb::read_16(next, blocks as u32, false);
            let length = (blocks * block_size) as u32;
            in_flight.push_back(tokio::spawn(async move {
                let cdb = command.encode();
                let name = command.row().name;
                checked(&session, lun, name, &cdb, DataDirection::Read(length)).await
            }));
            next += blocks;
        }
        let Some(task) = in_flight.pop_front() else {
            break;
        };
        let outcome = task.await.map_err(|e| e.to_string())??;
        sink.write_all(&outcome.data_in)
            .map_err(|e| e.to_string())?;
        progress.advance(outcome.data_in.len() as u64);
    }
    sink.flush().map_err(|e| e.to_string())?;
    progress.finish();
    let _ = session.logout().await;
    Ok(())
}

async fn write(url: &str, nexus: &OneShotOptions, input: &Path, lba: u64) -> Result<(), String> {
    let mut file = std::fs::File::open(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let file_bytes = file
        .metadata()
        .map_err(|e| format!("{}: {e}", input.display()))?
        .len();
    let (session, lun) = connect(url, nexus).await?;
    let capacity = read_capacity(&session, lun).await?;
    let block_size = capacity.block_size as u64;
    let blocks = file_bytes.div_ceil(block_size);
    check_range(&capacity, lba, blocks)?;
    if file_bytes % block_size != 0 {
        tracing::warn!(
            "{} is {file_bytes} bytes, not a multiple of the {block_size}-byte block: the last block is padded with zeros",
            input.display()
        );
    }
    let session = Arc::new(session);
    let chunk_bytes = (COPY_CHUNK_BYTES / block_size).max(1) * block_size;
    let progress = Progress::bytes(file_bytes, true);
    let mut in_flight = std::collections::VecDeque::new();
    let mut offset = 0u64;
    while offset < file_bytes || !in_flight.is_empty() {
        while offset < file_bytes && in_flight.len() < COPY_QUEUE_DEPTH {
            let length = chunk_bytes.min(file_bytes - offset);
            let mut data = vec![0u8; length.div_ceil(block_size) as usize * block_size as usize];
            file.read_exact(&mut data[..length as usize])
                .map_err(|e| format!("{}: {e}", input.display()))?;
            let command = Cdb::write_16(
                lba + offset / block_size,
                (data.len() as u64 / block_size) as u32,
                false,
            );
            let session = Arc::clone(&session);
            in_flight.push_back((
                length,
                tokio::spawn(async move {
                    let cdb = command.encode();
                    let name = command.row().name;
                    checked(&session, lun, name, &cdb, DataDirection::Write(data)).await
                }),
            ));
            offset += length;
        }
        let Some((length, task)) = in_flight.pop_front() else {
            break;
        };
        task.await.map_err(|e| e.to_string())??;
        progress.advance(length);
    }
    let sync = Cdb::SynchronizeCache {
        lba: Lba(0),
        blocks: BlockCount(0),
        ten: true,
    };
    checked(
        &session,
        lun,
        sync.row().name,
        &sync.encode(),
        DataDirection::None,
    )
    .await?;
    progress.finish();
    let _ = session.logout().await;
    Ok(())
}

/// `hexdump -C`-style output.
struct HexDump {
    offset: u64,
    out: std::io::BufWriter<std::io::Stdout>,
}

impl HexDump {
    fn new(offset: u64) -> HexDump {
        HexDump {
            offset,
            out: std::io::BufWriter::new(std::io::stdout()),
        }
    }
}

impl Write for HexDump {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for line in buf.chunks(16) {
            let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
            let text: String = line
                .iter()
                .map(|&b| {
                    if b.is_ascii_graphic() || b == b' ' {
                        b as char
                    } else {
                        '.'
                    }
                })
                .collect();
            writeln!(
                self.out,
                "{:08x}  {:<47}  |{text}|",
                self.offset,
                hex.join(" ")
            )?;
            self.offset += line.len() as u64;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lunlock_iscsi::message::Residual;

    #[test]
    fn failures_are_described_like_sg3_utils() {
        let outcome = ScsiOutcome {
            status: 2,
            sense: vec![
                0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0,
            ],
            data_in: Vec::new(),
            residual: Residual::None,
        };
        assert_eq!(
            describe_failure("READ(16)", &outcome),
            "READ(16) failed: Check Condition: Illegal request, Logical block address out of range"
        );
    }

    #[test]
    fn designators_are_listed() {
        let mut page = vec![0, 0x83, 0, 0];
        page.extend_from_slice(&[0x01, 0x03, 0, 8, 0x60, 1, 2, 3, 4, 5, 6, 7]);
        page.extend_from_slice(&[0x61, 0x94, 0, 4, 0, 0, 0, 2]);
        assert_eq!(
            designators(&page),
            vec!["naa:         6001020304050607", "target port: 2"]
        );
    }

    #[test]
    fn target_port_groups_are_listed() {
        let group = TargetPortGroupDescriptor {
            id: 2,
            preferred: false,
            asymmetric_access_state: 0,
            supported_states: 0x01,
            status_code: 0,
            relative_target_ports: vec![2, 5],
        };
        assert_eq!(
            target_port_group_line(&group),
            "port group 2: active/optimized, target ports 2, 5"
        );
    }

    #[test]
    fn ranges_are_checked_without_overflow() {
        let capacity = Capacity {
            blocks: 100,
            block_size: 512,
            thin: true,
        };
        assert!(check_range(&capacity, 99, 1).is_ok());
        assert!(check_range(&capacity, 99, 2).is_err());
        assert!(check_range(&capacity, u64::MAX, 2).is_err());
    }
}
