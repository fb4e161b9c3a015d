use std::process::ExitCode;

fn main() -> ExitCode {
    match leadrouter::cli::run() {
        Ok(code) => code,
        Err(e) => {
            // One line: scripts and humans both read the first line of stderr.
            eprintln!("leadrouter: {}", leadrouter::cli::error_line(&e));
            ExitCode::FAILURE
        }
    }
}
