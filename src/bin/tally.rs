//! The `tally` command: thin; it parses, calls the library, prints.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "An embeddable, crash-safe account ledger"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the kill -9 campaign against a child `tally` process.
    Crashtest(tally::crashtest::CampaignArgs),
    /// (internal) The child process of `crashtest`.
    #[command(hide = true)]
    CrashWorker(tally::crashtest::WorkerArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Crashtest(args) => tally::crashtest::run_campaign_main(args),
        Command::CrashWorker(args) => tally::crashtest::run_worker_main(args),
    };
    std::process::exit(code);
}
