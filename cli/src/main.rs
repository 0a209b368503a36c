//! The `openshell` command line: argument parsing and output formatting only.
//!
//! Each command group lives in `cmd/`; kernel work happens in the runtime crate. Errors
//! are printed as one `openshell: ...` line (with what to do next), never a backtrace.
#![forbid(unsafe_code)]

mod cmd;
mod complete;
mod output;

use clap::{Parser, Subcommand};

/// Rootless sandboxes for AI agents: namespaces, Landlock, seccomp and a policy proxy,
/// without a container engine.
#[derive(Debug, Parser)]
#[command(name = "openshell", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    globals: Globals,
    #[command(subcommand)]
    command: Command,
}

/// The options every command takes.
#[derive(Debug, clap::Args)]
struct Globals {
    /// Output format for commands that print data.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = output::Format::Table)]
    output: output::Format,
    /// Run this command on an `openshell serve` (unix:///path/to/api.sock) instead of
    /// here: its sandboxes, its environment, no terminal.
    #[arg(
        long,
        global = true,
        env = "OPENSHELL_HOST",
        value_name = "unix:///PATH"
    )]
    host: Option<String>,
    /// Say more: -v shows the fallbacks setup takes (overlayfs copied, nftables by the
    /// host's nft, ...) and, for `run`, every network decision; -vv adds debug detail.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// `openshell run ...` parsed without building the other commands' arguments: clap
/// builds every subcommand's definition before parsing, which was a measurable part of
/// `run`'s start-up (bench/RESULTS.md). Same globals, same `RunArgs`; anything it does
/// not accept as is (help, version, an error) goes to the full parser, which has the
/// complete usage to show.
#[derive(Debug, Parser)]
#[command(name = "openshell")]
struct RunOnly {
    #[command(flatten)]
    globals: Globals,
    #[command(subcommand)]
    command: RunCommand,
}

#[derive(Debug, Subcommand)]
enum RunCommand {
    Run(Box<cmd::run::RunArgs>),
}

impl Cli {
    fn parse_args() -> Self {
        let mut args = std::env::args_os();
        if args.nth(1).is_some_and(|a| a == "run")
            && let Ok(RunOnly {
                globals,
                command: RunCommand::Run(run),
            }) = RunOnly::try_parse()
        {
            return Self {
                globals,
                command: Command::Run(run),
            };
        }
        Self::parse()
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command in a new sandbox and return its exit status.
    Run(Box<cmd::run::RunArgs>),
    /// List, inspect and delete sandboxes.
    #[command(subcommand, alias = "sb")]
    Sandbox(cmd::sandbox::SandboxCommand),
    /// Pull, list, inspect and remove OCI images.
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// Credentials kept on the host: sandboxes get placeholders, the proxy the values.
    #[command(subcommand)]
    Provider(cmd::provider::ProviderCommand),
    /// Route inference.local (the privacy router) to a provider's model.
    #[command(subcommand)]
    Inference(cmd::inference::InferenceCommand),
    /// Work with policy files.
    #[command(subcommand, alias = "pol")]
    Policy(cmd::policy::PolicyCommand),
    /// Check what this host offers sandboxes, and how to fix what is missing.
    Doctor,
    /// Sandboxes (how many, which run), store paths, kernel features in use.
    Status,
    /// Space used by images and sandboxes; remove everything of this user.
    #[command(subcommand)]
    System(cmd::system::SystemCommand),
    /// Forward host ports to a running sandbox's loopback (a dev server inside).
    #[command(subcommand, alias = "fwd")]
    Forward(cmd::forward::ForwardCommand),
    /// A live dashboard: sandboxes, their logs (denials highlighted) and policies;
    /// open a shell, delete.
    Term(cmd::term::TermArgs),
    /// Show a sandbox's log: policy loads and every network decision.
    #[command(alias = "lg")]
    Logs(cmd::logs::LogsArgs),
    /// An SSH server on stdin/stdout for a sandbox: what `sandbox ssh-config` puts in
    /// `ProxyCommand` (every session runs as `sandbox exec`).
    SshProxy {
        /// The sandbox.
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        name: String,
    },
    /// Serve the API for all of this user's sandboxes on a unix socket (docs/api.md);
    /// restart `--restart` sandboxes, prune idle ones. Optional: the CLI needs no server.
    Serve(cmd::serve::ServeArgs),
    /// Print a shell completion script (commands, options, and the names of your
    /// sandboxes, images and providers): e.g. `source <(openshell completions bash)`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Internal: join a sandbox's user and network namespaces and hand its supervisor
    /// new sockets of that namespace (port forwarding).
    #[command(name = "__connector", hide = true)]
    Connector {
        /// The sandbox's init (host pid).
        pid: u32,
    },
    /// Internal: keep a sandbox's first command on a pty one can attach to
    /// (`sandbox create`, `sandbox connect`).
    #[command(name = "__session", hide = true)]
    Session {
        /// The sandbox.
        name: String,
        /// Delete the sandbox when the command ends.
        #[arg(long)]
        no_keep: bool,
    },
    /// Internal: hold the user namespace rootless sandboxes are made in (started by
    /// `run`; exits after ten idle minutes).
    #[command(name = "__userns-holder", hide = true)]
    UsernsHolder,
    /// Write the man pages (openshell.1 and one per command group) into DIR.
    #[command(hide = true)]
    Man {
        /// Where the pages go.
        dir: std::path::PathBuf,
    },
}

/// Commands that only print: a closed pipe (`| head`) ends them quietly, as other
/// CLIs end, instead of a panic in `println!`. Commands that run supervisors, proxies
/// or network clients keep SIGPIPE ignored (a peer's close is an error there).
fn quiet_on_closed_pipe(c: &Command) -> bool {
    matches!(
        c,
        Command::Completions { .. } | Command::Logs(_) | Command::Status | Command::Doctor
    )
}

/// Whether `c` prints data that `-o json|yaml` can shape. The others print messages
/// only: asking them for JSON is refused with a message, never silently ignored.
fn prints_data(c: &Command) -> bool {
    use cmd::image::ImageCommand as I;
    use cmd::inference::InferenceCommand as Inf;
    use cmd::policy::PolicyCommand as P;
    use cmd::provider::ProviderCommand as Pr;
    use cmd::sandbox::SandboxCommand as S;
    use cmd::system::SystemCommand as Sys;
    match c {
        Command::Sandbox(s) => matches!(
            s,
            S::List { .. } | S::Get { .. } | S::Explain { .. } | S::Create(_) | S::Recreate { .. }
        ),
        Command::Image(i) => matches!(i, I::List { .. } | I::Inspect { .. }),
        Command::Provider(p) => !matches!(p, Pr::Delete { .. }),
        Command::Inference(i) => matches!(i, Inf::Get { .. }),
        Command::Policy(p) => matches!(p, P::Get { .. } | P::List { .. } | P::Validate { .. }),
        Command::System(s) => matches!(s, Sys::Df),
        Command::Doctor | Command::Status | Command::Logs(_) => true,
        Command::Forward(f) => matches!(f, cmd::forward::ForwardCommand::List),
        Command::Run(_)
        | Command::Term(_)
        | Command::SshProxy { .. }
        | Command::Serve(_)
        | Command::Completions { .. }
        | Command::Connector { .. }
        | Command::Session { .. }
        | Command::UsernsHolder
        | Command::Man { .. } => false,
    }
}

/// `openshell man DIR`: `openshell.1`, and `openshell-GROUP.1` for each command.
fn man_pages(dir: &std::path::Path) -> i32 {
    let root = <Cli as clap::CommandFactory>::command();
    let write = |name: &str, cmd: clap::Command| -> std::io::Result<()> {
        let mut buf = Vec::new();
        // clap names are `&'static str`; this one-shot command leaks a few bytes.
        let name: &'static str = Box::leak(name.to_string().into_boxed_str());
        clap_mangen::Man::new(cmd.name(name)).render(&mut buf)?;
        std::fs::write(dir.join(format!("{name}.1")), buf)
    };
    let result = std::fs::create_dir_all(dir).and_then(|()| {
        write("openshell", root.clone())?;
        for sub in root.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(&format!("openshell-{}", sub.get_name()), sub.clone())?;
        }
        Ok(())
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("openshell: man pages in {}: {e}", dir.display());
            125
        }
    }
}

/// The registration script of `shell`: it calls `openshell` (from PATH) with
/// `COMPLETE=SHELL` for every completion, so names complete too.
fn completions(shell: clap_complete::Shell) -> i32 {
    let name = shell.to_string();
    let shells = clap_complete::env::Shells::builtins();
    let Some(sh) = shells.completer(&name) else {
        eprintln!(
            "openshell: completions for {name} are not supported (bash, zsh, fish, elvish, powershell)"
        );
        return 2;
    };
    let mut out = std::io::stdout().lock();
    let mut written =
        sh.write_registration("COMPLETE", "openshell", "openshell", "openshell", &mut out);
    if shell == clap_complete::Shell::Zsh {
        // Autoloaded from fpath as `_openshell`, the first completion runs this file:
        // complete then too, not only from the second TAB on.
        written = written.and_then(|()| {
            std::io::Write::write_all(
                &mut out,
                b"if [ \"$funcstack[1]\" = \"_openshell\" ]; then\n    _clap_dynamic_completer_openshell \"$@\"\nfi\n",
            )
        });
    }
    match written {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("openshell: completions: {e}");
            1
        }
    }
}

/// Messages of the supervisor, proxy and image code (`tracing`) on stderr: warnings
/// always, information with -v, debug detail with -vv.
fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .try_init();
}

fn main() {
    // `COMPLETE=SHELL openshell ...`: the completion scripts calling back (complete.rs).
    clap_complete::CompleteEnv::with_factory(<Cli as clap::CommandFactory>::command)
        .completer("openshell")
        .complete();
    let cli = Cli::parse_args();
    // An empty OPENSHELL_HOST is no host.
    let host = cli.globals.host.as_deref().filter(|h| !h.is_empty());
    if let Some(host) = host
        && !matches!(
            cli.command,
            Command::Serve(_)
                | Command::Completions { .. }
                | Command::Man { .. }
                | Command::Connector { .. }
                | Command::Session { .. }
                | Command::UsernsHolder
        )
    {
        if std::env::var_os("OPENSHELL_VIA_SERVE").is_some() {
            // Run by a server: forwarding again could reach that same server forever.
            eprintln!("openshell: --host cannot be used through the API");
            std::process::exit(2);
        }
        let code = match cmd::remote::args_without_host() {
            Ok(args) => cmd::remote::forward(host, args),
            Err(e) => {
                eprintln!("openshell: {e}");
                2
            }
        };
        std::process::exit(code);
    }
    if cli.globals.output != output::Format::Table && !prints_data(&cli.command) {
        eprintln!(
            "openshell: -o {}: this command prints no data to format (only the commands that list or show things take -o)",
            cli.globals.output.name()
        );
        std::process::exit(2);
    }
    init_tracing(cli.globals.verbose);
    if quiet_on_closed_pipe(&cli.command) {
        openshell_runtime::api::default_sigpipe();
    }
    let code = match cli.command {
        Command::Run(mut args) => {
            args.verbose = cli.globals.verbose > 0;
            cmd::run::run(*args)
        }
        Command::Policy(c) => cmd::policy::run(c, cli.globals.output),
        Command::Provider(c) => cmd::provider::run(c, cli.globals.output),
        Command::Inference(c) => cmd::inference::run(c, cli.globals.output),
        Command::Image(c) => cmd::image::run(c, cli.globals.output),
        Command::Sandbox(c) => cmd::sandbox::run(c, cli.globals.output),
        Command::Doctor => cmd::doctor::run(cli.globals.output),
        Command::Status => cmd::status::run(cli.globals.output),
        Command::System(c) => cmd::system::run(c, cli.globals.output),
        Command::Logs(args) => cmd::logs::run(args, cli.globals.output),
        Command::Term(args) => cmd::term::run(args),
        Command::SshProxy { name } => cmd::ssh::proxy(&name),
        Command::Session { name, no_keep } => cmd::session::keeper_main(&name, no_keep),
        Command::Man { dir } => man_pages(&dir),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Forward(c) => cmd::forward::run(c, cli.globals.output),
        Command::Connector { pid } => openshell_runtime::api::forward::connector_main(pid),
        Command::Completions { shell } => completions(shell),
        Command::UsernsHolder => openshell_runtime::api::host::userns_holder_main(),
    };
    std::process::exit(code);
}
