//! `feral`: the command line of Feral. Submits, inspects, watches and cancels training jobs
//! on a coordinator, lists its workers, prepares datasets, and runs the one-machine demo.
#![forbid(unsafe_code)]

mod children;
mod client;
mod demo;
mod import;
mod jobs;
mod manifest;
mod prepare;
mod render;
mod rounds;
mod table;
mod watch;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use feral_proto::credentials::BearerToken;

/// Feral: distributed training of facial-expression recognition models.
#[derive(Debug, Parser)]
#[command(name = "feral", version)]
struct Cli {
    /// The coordinator's gRPC address, or several separated by commas (coordinators on one
    /// etcd: the CLI talks to the leader).
    #[arg(long, global = true, env = "FERAL_COORDINATOR", default_value = "http://127.0.0.1:7070")]
    coordinator: String,
    /// A file whose first line is the bearer token to send, for a coordinator with tokens
    /// (a submitter or admin token). The token may also come in `FERAL_TOKEN`.
    #[arg(long, global = true, env = "FERAL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The CA certificate (PEM) that signed the coordinator's certificate, for `https://` addresses.
    #[arg(long, global = true, env = "FERAL_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// A client certificate (PEM), for a coordinator that requires one (mutual TLS).
    #[arg(long, global = true, env = "FERAL_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The key (PEM) of --tls-cert.
    #[arg(long, global = true, env = "FERAL_TLS_KEY")]
    tls_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit a job spec (TOML) and print the new job's id.
    Submit {
        /// The job spec file, e.g. job.toml.
        spec: PathBuf,
        /// Then follow the job until it finishes, like `feral watch`.
        #[arg(long)]
        watch: bool,
    },
    /// List the jobs, or show one job in detail.
    Status {
        /// The job to show; all jobs when left out.
        job: Option<String>,
    },
    /// Follow a job until it finishes; exits 0 only if it succeeded.
    Watch {
        /// The job to follow.
        job: String,
    },
    /// Cancel a queued or running job.
    Cancel {
        /// The job to cancel.
        job: String,
    },
    /// Continue a failed or cancelled job from its last checkpoint, with a fresh budget of
    /// attempts (after the cause, e.g. a full disk, is fixed).
    Resume {
        /// The job to resume.
        job: String,
    },
    /// List the workers registered with the coordinator.
    Workers,
    /// Prepare a dataset directory from a source.
    Prepare {
        #[command(subcommand)]
        source: prepare::PrepareSource,
    },
    /// Run everything on this machine: dataset, coordinator, workers and a small job.
    Demo(demo::DemoArgs),
    /// Look at a prepared dataset.
    Dataset {
        #[command(subcommand)]
        command: DatasetCommand,
    },
    /// Classify images, folders or a dataset split with a saved model (`feral predict --help`).
    #[command(disable_help_flag = true)]
    Predict {
        /// MODEL_DIR INPUT… [--split S] [--resize] [--format table|csv|json], for feral-model.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// A saved model's accuracy, macro-F1, per-class F1 and confusion on a prepared dataset (`feral eval --help`).
    #[command(disable_help_flag = true)]
    Eval {
        /// MODEL_DIR DATASET [--split S] [--format table|csv|json], for feral-model.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Write a saved model as ONNX (`feral export --help`).
    #[command(disable_help_flag = true)]
    Export {
        /// MODEL_DIR --format onnx [--out FILE] [--python PYTHON], for feral-model.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(Debug, Subcommand)]
enum DatasetCommand {
    /// Counts per split and class, imbalance ratio, shards and their checksum status.
    Inspect {
        /// The dataset directory (with manifest.json).
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (urls, client_certificate) = (cli.coordinator.clone(), cli.tls_cert.is_some());
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let outcome = dispatch(cli).await;
        // A transport failure may be a TLS mix-up: ask the port what it speaks.
        let hint = match &outcome {
            Err(error) => feral_proto::credentials::tls_hint(&urls, client_certificate, &feral_common::errors::error_chain(error.as_ref())).await,
            Ok(_) => None,
        };
        (outcome, hint)
    });
    let (outcome, hint) = outcome;
    // Do not wait for a dataset generator that an interrupt left running.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match outcome {
        Ok(code) => code,
        Err(error) => {
            // Errors carry the coordinator's messages and names from others: printed escaped.
            let message = feral_common::errors::error_chain(error.as_ref());
            eprintln!("error: {}", feral_common::text::printable(&message));
            if let Some(hint) = hint {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let token = BearerToken::from_sources(cli.token_file.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
    let tls = feral_proto::credentials::client_tls(cli.tls_ca.as_deref(), cli.tls_cert.as_deref(), cli.tls_key.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
    let target = client::Target { urls: cli.coordinator, token, tls };
    let url = &target;
    match cli.command {
        Command::Submit { spec, watch } => jobs::submit(url, &spec, watch).await,
        Command::Status { job } => jobs::status(url, job.as_deref()).await,
        Command::Watch { job } => jobs::watch(url, &job).await,
        Command::Cancel { job } => jobs::cancel(url, &job).await,
        Command::Resume { job } => jobs::resume(url, &job).await,
        Command::Workers => jobs::workers(url).await,
        Command::Prepare { source } => prepare::prepare(source).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Dataset { command: DatasetCommand::Inspect { dir } } => import::inspect(dir).await,
        Command::Predict { args } => model_command("predict", &args),
        Command::Eval { args } => model_command("eval", &args),
        Command::Export { args } => model_command("export", &args),
    }
}

/// `feral predict|eval|export`: run by `feral-model` beside this binary, which links
/// libtorch (this one does not, so it runs where libtorch is not installed).
fn model_command(command: &str, args: &[OsString]) -> anyhow::Result<ExitCode> {
    let program = demo::sibling_binary("feral-model")?;
    let status = std::process::Command::new(&program).arg(command).args(args).status().with_context(|| format!("cannot run {}", program.display()))?;
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Logs go to stderr, `warn` and above unless `RUST_LOG` says otherwise.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent_and_documented() {
        Cli::command().debug_assert();
        fn check(command: &clap::Command, path: &str) {
            for arg in command.get_arguments().filter(|a| !["help", "version"].contains(&a.get_id().as_str())) {
                assert!(arg.get_help().is_some(), "{path} --{} has no help", arg.get_id());
            }
            for sub in command.get_subcommands() {
                assert!(sub.get_about().is_some(), "{path} {} has no help", sub.get_name());
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        check(&Cli::command(), "feral");
    }

    #[test]
    fn coordinator_flag_is_global_with_a_default() {
        let cli = Cli::try_parse_from(["feral", "status"]).expect("parses");
        assert!(cli.coordinator.starts_with("http://"));
        let cli = Cli::try_parse_from(["feral", "watch", "job-1", "--coordinator", "http://h:1"]).expect("parses");
        assert_eq!(cli.coordinator, "http://h:1");
        assert!(matches!(cli.command, Command::Watch { job } if job == "job-1"));
        let cli = Cli::try_parse_from(["feral", "submit", "j.toml", "--watch"]).expect("parses");
        assert!(matches!(cli.command, Command::Submit { watch: true, .. }));
    }
}
