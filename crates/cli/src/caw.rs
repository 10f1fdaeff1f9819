//! `lunlock caw`: one COMPARE AND WRITE (SBC-4 5.3), with sg_compare_and_write's options and exit statuses: 0 when
//! the blocks matched and were written, 14 on a miscompare (nothing written; the offset of the first differing
//! byte is printed), 1 on any other failure.

use crate::OneShotOptions;
use lunlock_cluster::iscsi_disk::{classify_status, Class};
use lunlock_initiator::DataDirection;
use lunlock_scsi::cdb::Command as Cdb;
use std::path::PathBuf;
use std::process::ExitCode;

/// sg3_utils' exit status for a miscompare (SG_LIB_CAT_MISCOMPARE).
const EXIT_MISCOMPARE: u8 = 14;

#[derive(clap::Args)]
pub struct CawArgs {
    /// iscsi://host[:port]/target-iqn/lun
    url: String,
    #[arg(long)]
    lba: u64,
    /// Blocks to compare and write (1 to the LUN's MAXIMUM COMPARE AND WRITE LENGTH).
    #[arg(long, default_value_t = 1)]
    num: u8,
    /// The compare data followed by the write data, NUM blocks each.
    #[arg(long = "in", value_name = "FILE", conflicts_with_all = ["inc", "inw"])]
    input: Option<PathBuf>,
    /// The compare data (NUM blocks).
    #[arg(long, value_name = "FILE", requires = "inw")]
    inc: Option<PathBuf>,
    /// The write data (NUM blocks).
    #[arg(long, value_name = "FILE", requires = "inc")]
    inw: Option<PathBuf>,
    /// Clear FUA (it is set by default, as a lock write must be durable before GOOD).
    #[arg(long)]
    no_fua: bool,
    #[command(flatten)]
    nexus: OneShotOptions,
}

pub fn main(args: CawArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&e.to_string()),
    };
    match runtime.block_on(run(&args)) {
        Ok(None) => {
            println!(
                "GOOD: {} block(s) at LBA {} compared and written",
                args.num, args.lba
            );
            ExitCode::SUCCESS
        }
        Ok(Some(offset)) => {
            match offset {
                Some(offset) => println!("Miscompare at byte offset {offset}: nothing written"),
                None => println!("Miscompare: nothing written"),
            }
            ExitCode::from(EXIT_MISCOMPARE)
        }
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("lunlock caw: {message}");
    ExitCode::FAILURE
}

/// Ok(None): written; Ok(Some(offset)): miscompare.
async fn run(args: &CawArgs) -> Result<Option<Option<u64>>, String> {
    if args.num == 0 {
        return Err("--num must be at least 1".into());
    }
    let data = data_out(args)?;
    let (session, lun) = crate::client::login(&args.url, &args.nexus).await?;
    let _ = session.test_unit_ready(lun).await;
    let capacity = session
        .read_capacity(lun)
        .await
        .map_err(|e| e.to_string())?;
    let expected = 2 * usize::from(args.num) * capacity.block_size as usize;
    if data.len() != expected {
        return Err(format!(
            "{} bytes of compare and write data; {} blocks of {} bytes need {expected}",
            data.len(),
            args.num,
            capacity.block_size
        ));
    }
    let cdb = Cdb::compare_and_write(args.lba, args.num, !args.no_fua).encode();
    let outcome = session
        .execute(lun, &cdb, DataDirection::Write(data))
        .await
        .map_err(|e| e.to_string())?;
    let _ = session.logout().await;
    match classify_status(outcome.status, &outcome.sense) {
        Class::Good => Ok(None),
        Class::Miscompare(offset, _) => Ok(Some(offset)),
        _ => Err(crate::client::describe_failure(
            "COMPARE AND WRITE",
            &outcome,
        )),
    }
}

fn data_out(args: &CawArgs) -> Result<Vec<u8>, String> {
    let read = |path: &PathBuf| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    match (&args.input, &args.inc, &args.inw) {
        (Some(both), None, None) => read(both),
        (None, Some(compare), Some(write)) => {
            let mut data = read(compare)?;
            data.extend(read(write)?);
            Ok(data)
        }
        _ => Err("give --in FILE, or --inc FILE and --inw FILE".into()),
    }
}
