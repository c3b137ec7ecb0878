//! The `backendai-manager` binary.

fn main() -> std::process::ExitCode {
    backendai_manager::cli::main()
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
