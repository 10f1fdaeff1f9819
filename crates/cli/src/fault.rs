//! `lunlock fault URL [SPEC...] [--clear] [--list]`: changes a running target's fault injection in-band with
//! LUNLOCK FAULT CONTROL (vendor-specific opcode 0xC5, docs/fault-injection.md).

use crate::OneShotOptions;
use lunlock_initiator::{DataDirection, ScsiOutcome, Session};
use lunlock_server::fault::{fault_control_cdb, FaultRule};

/// Largest fault table listing read back (64 rules of well under 128 bytes each).
const LISTING_BYTES: u32 = 16 * 1024;

/// What the user asked for, in the order it is done: clear, then add, then list.
pub struct FaultRequest {
    pub specs: Vec<String>,
    pub clear: bool,
    pub list: bool,
}

pub fn run(url: &str, nexus: &OneShotOptions, request: &FaultRequest) -> Result<(), String> {
    // Specs are checked here first, so a typo is reported before any connection is made.
    for spec in &request.specs {
        FaultRule::parse(spec).map_err(|e| e.to_string())?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(apply(url, nexus, request))
}

async fn apply(url: &str, nexus: &OneShotOptions, request: &FaultRequest) -> Result<(), String> {
    let (session, lun) = crate::client::login(url, nexus).await?;
    // A fresh nexus has a pending unit attention; consume it so a refusal is reported as what it is.
    let _ = session.test_unit_ready(lun).await;
    if request.clear {
        send(&session, lun, "clear").await?;
    }
    if !request.specs.is_empty() {
        send(&session, lun, &format!("add {}", request.specs.join(" "))).await?;
    }
    if request.list || (!request.clear && request.specs.is_empty()) {
        let outcome = session
            .execute(
                lun,
                &fault_control_cdb(LISTING_BYTES),
                DataDirection::Read(LISTING_BYTES),
            )
            .await
            .map_err(|e| e.to_string())?;
        checked(&outcome)?;
        print!("{}", String::from_utf8_lossy(&outcome.data_in));
    }
    let _ = session.logout().await;
    Ok(())
}

async fn send(session: &Session, lun: u64, text: &str) -> Result<(), String> {
    let data = text.as_bytes().to_vec();
    let outcome = session
        .execute(
            lun,
            &fault_control_cdb(data.len() as u32),
            DataDirection::Write(data),
        )
        .await
        .map_err(|e| e.to_string())?;
    checked(&outcome)
}

fn checked(outcome: &ScsiOutcome) -> Result<(), String> {
    if outcome.is_good() {
        return Ok(());
    }
    let sense = outcome.sense_summary().map(|s| (s.key, s.asc, s.ascq));
    match sense {
        Some((0x05, 0x20, 0x00)) => Err(
            "fault injection is not enabled on this target (serve with --enable-fault-injection or --fault, \
             or set fault_injection = true in its [[target]])"
                .to_string(),
        ),
        Some((0x05, 0x26, 0x00)) => Err("the target refused the fault command".to_string()),
        _ => Err(crate::client::describe_failure(
            "LUNLOCK FAULT CONTROL",
            outcome,
        )),
    }
}
