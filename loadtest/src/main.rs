//! The `roomcast-loadtest` command line: one subcommand per scenario, plus
//! `report` for charts and the hidden `idle-worker` that `idle` re-executes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use roomcast_loadtest::attack::{self, AttackArgs};
use roomcast_loadtest::cold::{self, ColdArgs};
use roomcast_loadtest::report;
use roomcast_loadtest::scenario::{
    self, Common, ConnectArgs, DurableArgs, EchoArgs, FanoutArgs, IdleArgs, IdleWorkerArgs,
};
use roomcast_loadtest::stats::RunResult;

#[derive(Parser)]
#[command(name = "roomcast-loadtest", version, about = "Load generator for roomcast-protocol servers (loopback only).")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// R rooms x M members, P publishers per room at a total rate; delivery latency from the schedule.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: FanoutArgs,
    },
    /// N connections pinging with K in flight; round trips/s and latency.
    Echo {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: EchoArgs,
    },
    /// N connections (upgrade + join) at concurrency C; connects/s and handshake latency.
    Connect {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: ConnectArgs,
    },
    /// Hold N idle connections; the server's memory per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: IdleArgs,
    },
    /// Publishers that wait for acks; durable publishes/s and ack latency.
    Durable {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: DurableArgs,
    },
    /// A reactor's worst stall while N cold rooms load at once (join with since, send, history), seen by a pinging probe.
    ColdRooms {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: ColdArgs,
    },
    /// Hostile traffic, one attack after another, while healthy clients ping and send; goal check per attack.
    Attack {
        #[command(flatten)]
        args: AttackArgs,
    },
    /// Render JSON results into an SVG chart.
    Report {
        /// Result files written with --json.
        #[arg(required = true)]
        results: Vec<String>,
        #[arg(long, default_value = "chart.svg")]
        out: String,
    },
    #[command(hide = true)]
    IdleWorker {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: IdleWorkerArgs,
    },
}

/// Prints the summary (and `line`, a scenario's own one-line verdict) and
/// writes the JSON; 1 when any violation was seen.
fn emit(common: &Common, r: &RunResult, line: &str) -> ExitCode {
    print!("{}{line}", r.summary());
    if let Some(path) = &common.json {
        let text = match serde_json::to_string_pretty(r) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot encode result: {e}");
                return ExitCode::from(2);
            }
        };
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("error: cannot write {path}: {e}");
            return ExitCode::from(2);
        }
    }
    if r.violations.total() > 0 {
        eprintln!("FAILED: {} violations", r.violations.total());
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// Prints the attack table and writes its JSON; 1 when any attack missed its goal.
fn emit_attack(args: &AttackArgs, r: &attack::Report) -> ExitCode {
    print!("{}", r.table());
    if let Some(path) = &args.json {
        let text = match serde_json::to_string_pretty(r) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot encode result: {e}");
                return ExitCode::from(2);
            }
        };
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("error: cannot write {path}: {e}");
            return ExitCode::from(2);
        }
    }
    if r.all_met {
        ExitCode::SUCCESS
    } else {
        eprintln!("FAILED: not every attack met its goal");
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.cmd {
        Cmd::Fanout { common, args } => scenario::fanout(common, args).map(|r| emit(common, &r, "")),
        Cmd::Echo { common, args } => scenario::echo(common, args).map(|r| emit(common, &r, "")),
        Cmd::Connect { common, args } => scenario::connect(common, args).map(|r| emit(common, &r, "")),
        Cmd::Idle { common, args } => scenario::idle(common, args).map(|r| emit(common, &r, "")),
        Cmd::Durable { common, args } => scenario::durable(common, args).map(|r| emit(common, &r, "")),
        Cmd::ColdRooms { common, args } => cold::run(common, args).map(|(r, line)| emit(common, &r, &line)),
        Cmd::Attack { args } => attack::run(args).map(|r| emit_attack(args, &r)),
        Cmd::IdleWorker { common, args } => scenario::idle_worker(common, args).map(|()| ExitCode::SUCCESS),
        Cmd::Report { results, out } => {
            return match report::load(results).and_then(|r| report::render(&r, std::path::Path::new(out))) {
                Ok(()) => {
                    println!("wrote {out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            };
        }
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
