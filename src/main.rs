//! The `echod` binary: parse the command line, start logging, run the chosen
//! part, and turn an error into a sentence and an exit status.

use std::process::ExitCode;

use echod::cli::{Cli, Command};

mod logger;

fn main() -> ExitCode {
    let cli = Cli::parse_or_exit();
    init_logging(cli.log_level());
    match &cli.command {
        None => serve(&cli),
        Some(Command::Generate(args)) => generate(args),
        Some(Command::Client(args)) => echod::client::run(&args.to_config()),
        Some(Command::Ping(args)) => echod::ping::run(&args.to_config()),
        Some(Command::Bench(args)) => echod::bench::run(&args.to_config()),
        Some(Command::Check(args)) => echod::check::command(args.to_request()),
    }
}

fn init_logging(level: log::LevelFilter) {
    // Logging to stderr is all this program does with the logger, and a
    // line that cannot be written is dropped, never a panic (see logger).
    logger::init(level);
}

fn serve(cli: &Cli) -> ExitCode {
    let config = cli.server_config();
    let server = match echod_server::server::Server::bind(&config) {
        Ok(server) => server,
        Err(err) => {
            eprintln!("echod: {err}");
            return ExitCode::FAILURE;
        }
    };
    match server.run() {
        // How the run ended chooses the status: 0 only when every session
        // finished (see echod_server::server::EXIT_STATUSES).
        Ok(outcome) => ExitCode::from(outcome.exit_status()),
        Err(err) => {
            log::error!("the server stopped on an error it cannot recover from: {err}");
            ExitCode::FAILURE
        }
    }
}

fn generate(args: &echod::generate::GenerateArgs) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match args.write(Cli::documented(), &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        // `echod generate man | head`: the reader has all it wanted.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            match &args.dir {
                Some(dir) => eprintln!(
                    "echod: could not write the {} into {}: {err}. Check that the directory \
                     exists and that you may write there.",
                    args.what,
                    dir.display()
                ),
                None => eprintln!("echod: could not print the {}: {err}", args.what),
            }
            ExitCode::FAILURE
        }
    }
}
