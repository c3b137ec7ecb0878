//! The `backendai-manager` binary.

fn main() -> std::process::ExitCode {
    backendai_manager::cli::main()
}
