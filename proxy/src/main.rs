fn main() -> std::process::ExitCode {
    match trellis_proxy::cli::main_with_args(std::env::args_os()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-proxy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
