fn main() -> std::process::ExitCode {
    match trellis_proxy::cli::main_with_args(std::env::args_os()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `--help`, `--version` and usage errors: clap prints them with its own exit status.
            if let Some(clap_error) = e.downcast_ref::<clap::Error>() {
                clap_error.exit();
            }
            eprintln!("trellis-proxy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
