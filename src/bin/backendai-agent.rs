//! `backendai-agent`: the node daemon. Configuration errors exit with code 2.

use clap::Parser;

#[actix_web::main]
async fn main() {
    let args = backendai_manager::agent::AgentArgs::parse();
    std::process::exit(backendai_manager::agent::main_with_args(args).await);
}
