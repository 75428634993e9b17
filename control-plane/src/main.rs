//! The `trellis-control-plane` binary; everything lives in the library's `cli` module.
#![forbid(unsafe_code)]

fn main() {
    if let Err(e) = trellis_control_plane::cli::main_with_args(std::env::args_os()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
