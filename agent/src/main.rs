//! `backendai-agent`: the node daemon. Configuration errors exit with code 2.

use clap::Parser;

#[actix_web::main]
async fn main() {
    let args = backendai_agent::AgentArgs::parse();
    std::process::exit(backendai_agent::main_with_args(args).await);
}
