//! Minimal launcher used while developing: `cargo run --example serve -- 127.0.0.1:3260 DATA_DIR`.
fn main() {
    let mut args = std::env::args().skip(1);
    let mut options = lunlock_server::ServeOptions::default();
    if let Some(listen) = args.next() {
        options.listen = vec![listen.parse().expect("ADDR:PORT")];
    }
    if let Some(dir) = args.next() {
        options.data_dir = dir.into();
    }
    if let Err(e) = lunlock_server::run_blocking(options) {
        eprintln!("lunlock: {e}");
        std::process::exit(1);
    }
}
