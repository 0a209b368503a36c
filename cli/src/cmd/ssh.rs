//! `openshell ssh-proxy NAME`: an SSH server (russh) on this process's stdin and
//! stdout, for OpenSSH's `ProxyCommand` (`sandbox ssh-config NAME` writes it).
//!
//! There is no listening socket at all: the ssh client starts this process and speaks
//! SSH over its pipes, so only a user who may run `openshell` on this sandbox's state
//! (the owner: the state dir is 0700) ever reaches it, and nothing runs while nobody
//! is connected. The client is therefore accepted without a password or key (the
//! "none" method) and the host key is made afresh for each connection (there is no
//! network path a man in the middle could sit on; the generated config says so to ssh).
//! docs/sandboxes.md explains the choice against a server in the supervisor.
//!
//! Every session runs as `openshell sandbox exec` (this binary, as a child): the same
//! confinement, identity and environment as `exec`, by construction. Its command and
//! environment travel in the child's environment, never on its command line. A session
//! with a pty gets a pty of the host as the child's terminal (the child relays it to a
//! pty of the sandbox, as for a user at a terminal); window changes are set on it and
//! signalled. `sftp` runs the sandbox's own sftp-server. `direct-tcpip` (`ssh -L`) may
//! only reach the sandbox's loopback: a socket made in its network namespace by the
//! connector helper, connected to 127.0.0.1:PORT.

use std::process::Stdio;
use std::sync::Arc;

use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::server::{Auth, ChannelOpenHandle, Config, Handler, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure, MethodKind, MethodSet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use openshell_runtime::api::record::Phase;
use openshell_runtime::api::{state, store};

use crate::output::fail;

/// Environment variables a client may send (`SendEnv`): sshd's default `AcceptEnv`,
/// and the terminal's.
fn accepted_env(k: &str) -> bool {
    k == "LANG" || k.starts_with("LC_") || k == "COLORTERM"
}

/// What an SSH session runs.
enum Run {
    Shell,
    Exec(String),
    Sftp,
}

/// The sandbox's sftp-server, wherever the image keeps it.
const SFTP: &str = "for p in /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server \
    /usr/lib/ssh/sftp-server /usr/libexec/sftp-server /usr/lib/sftp-server; do \
    [ -x \"$p\" ] && exec \"$p\"; done; \
    echo 'openshell: no sftp-server in this sandbox (install openssh-sftp-server in the image)' >&2; exit 127";

/// Serve one SSH connection on stdin/stdout for sandbox `name`; returns the exit status.
pub fn proxy(name: &str) -> i32 {
    let e = match store::find(&state::base_dir(), name) {
        Ok(e) => e,
        Err(err) => return fail(err),
    };
    let init = match &e.record {
        Ok(r) if r.phase().0 == Phase::Ready => r.init_pid.zip(r.supervisor.map(|s| s.pid)),
        Ok(r) => {
            return fail(format!(
                "sandbox {name} is not running ({}); start it with 'openshell sandbox start {name}'",
                r.phase().0
            ));
        }
        Err(err) => return fail(format!("sandbox {name}: {err}")),
    };
    let Some((init, supervisor)) =
        init.and_then(|(i, s)| Some((u32::try_from(i).ok()?, u32::try_from(s).ok()?)))
    else {
        return fail(format!("sandbox {name} is still starting; try again"));
    };
    let key = match host_key() {
        Ok(k) => k,
        Err(err) => return fail(format!("ssh-proxy: host key: {err}")),
    };
    let config = Arc::new(Config {
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-openshell_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods: MethodSet::from(&[MethodKind::None][..]),
        keys: vec![key],
        auth_rejection_time: std::time::Duration::from_millis(10),
        // An editor's connection sits idle for hours; ssh's own keepalives end a dead one.
        inactivity_timeout: None,
        nodelay: true,
        ..Default::default()
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => return fail(format!("ssh-proxy: runtime: {err}")),
    };
    let server = Server {
        name: name.to_string(),
        init_pid: init,
        supervisor,
        connector: Arc::new(std::sync::Mutex::new(None)),
    };
    let code = rt.block_on(async move {
        let io = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
        match russh::server::run_stream(config, io, server).await {
            Ok(session) => match session.await {
                Ok(()) => 0,
                Err(err) => fail(format!("ssh-proxy: {err}")),
            },
            Err(err) => fail(format!("ssh-proxy: {err}")),
        }
    });
    // The stdin reader, or a write to a pty nobody reads, may still be blocked on
    // tokio's blocking pool: the connection is over, do not wait for them for long —
    // but long enough for the sessions' tasks to be dropped, which ends their commands
    // (kill_on_drop, and the hang-up sent on a closed channel).
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}

/// A fresh ed25519 key for this connection.
fn host_key() -> std::io::Result<PrivateKey> {
    let mut seed = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut seed)?;
    Ok(PrivateKey::from(Ed25519Keypair::from_seed(&seed)))
}

/// One connection.
struct Server {
    name: String,
    init_pid: u32,
    /// The supervisor of `init_pid` when the connection began: the connector joins
    /// init's namespaces only while init is still its child (not a reused pid).
    supervisor: u32,
    connector: Arc<std::sync::Mutex<Option<openshell_runtime::api::forward::Connector>>>,
}

impl Handler for Server {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        // Whoever could start this process is the sandbox's owner (see the header).
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        tokio::spawn(session(self.name.clone(), channel));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _from: &str,
        _from_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let loopback = matches!(host, "localhost" | "127.0.0.1" | "::1" | "[::1]");
        let port = u16::try_from(port).ok().filter(|p| *p > 0);
        let (true, Some(port)) = (loopback, port) else {
            // Only the sandbox's own loopback: anything else would be a way around the
            // policy proxy.
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        // Connecting may take up to its timeout (a listener that never accepts): off the
        // connection's loop, so other channels go on meanwhile.
        let (connector, init, sup) = (self.connector.clone(), self.init_pid, self.supervisor);
        tokio::spawn(async move {
            match connect_inside(&connector, init, sup, port).await {
                Ok(stream) => {
                    reply.accept().await;
                    let mut ch = channel.into_stream();
                    let mut s = stream;
                    let _ = tokio::io::copy_bidirectional(&mut ch, &mut s).await;
                    let _ = ch.shutdown().await;
                }
                Err(_) => reply.reject(ChannelOpenFailure::ConnectFailed).await,
            }
        });
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pw: u32,
        _ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if accepted_env(name) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }
}

/// A TCP stream to the sandbox's 127.0.0.1:`port`.
async fn connect_inside(
    connector: &Arc<std::sync::Mutex<Option<openshell_runtime::api::forward::Connector>>>,
    init_pid: u32,
    supervisor: u32,
    port: u16,
) -> std::io::Result<tokio::net::TcpStream> {
    let c = connector.clone();
    let fd = tokio::task::spawn_blocking(move || {
        let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_none() {
            let parent = i32::try_from(init_pid)
                .ok()
                .and_then(openshell_runtime::api::exec::ppid);
            if parent.is_none() || parent != i32::try_from(supervisor).ok() {
                return Err(std::io::Error::other("the sandbox's init is gone"));
            }
            *c = Some(openshell_runtime::api::forward::Connector::start(init_pid)?);
        }
        let r = c.as_mut().map(|c| c.socket());
        match r {
            Some(Ok(fd)) => Ok(fd),
            Some(Err(e)) => {
                *c = None;
                Err(e)
            }
            None => Err(std::io::Error::other("no connector")),
        }
    })
    .await
    .map_err(std::io::Error::other)??;
    let sock = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    let s = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        sock.connect(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
    )
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// One session channel: collect pty and env requests until the shell, exec or
/// subsystem request, then run it.
async fn session(name: String, mut ch: Channel<Msg>) {
    let mut pty: Option<(String, u16, u16)> = None;
    let mut env: Vec<String> = Vec::new();
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    let run = loop {
        match ch.wait().await {
            Some(ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                ..
            }) => {
                let term: String = term
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || "-_.+".contains(*c))
                    .take(64)
                    .collect();
                pty = Some((term, clamp(col_width), clamp(row_height)));
            }
            Some(ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            }) if accepted_env(&variable_name) && env.len() < 32 => {
                let v: String = variable_value
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(256)
                    .collect();
                env.push(format!("{variable_name}={v}"));
            }
            Some(ChannelMsg::RequestShell { .. }) => break Run::Shell,
            Some(ChannelMsg::Exec { command, .. }) => {
                break Run::Exec(String::from_utf8_lossy(&command).into_owned());
            }
            Some(ChannelMsg::RequestSubsystem { name, .. }) if name == "sftp" => break Run::Sftp,
            None | Some(ChannelMsg::Close) => return,
            Some(_) => {}
        }
    };
    let argv: Vec<String> = match &run {
        Run::Shell => super::sandbox::LOGIN_SHELL
            .iter()
            .map(|s| s.to_string())
            .collect(),
        Run::Exec(cmd) => vec!["/bin/sh".into(), "-c".into(), cmd.clone()],
        Run::Sftp => vec!["/bin/sh".into(), "-c".into(), SFTP.into()],
    };
    // sftp never gets a terminal (its protocol is binary).
    let pty = if matches!(run, Run::Sftp) { None } else { pty };
    if let Some((term, _, _)) = &pty
        && !term.is_empty()
    {
        env.push(format!("TERM={term}"));
    }
    let code = match pty {
        Some((_, cols, rows)) => with_pty(&name, argv, env, cols, rows, &mut ch).await,
        None => with_pipes(&name, argv, env, &mut ch).await,
    };
    let code = match code {
        Ok(c) => c,
        Err(e) => {
            // Said on the session's stderr: the user sees why, not just a status.
            let mut w = ch.make_writer_ext(Some(1));
            let _ = w.write_all(format!("openshell: {e}\r\n").as_bytes()).await;
            125
        }
    };
    let _ = ch.exit_status(u32::try_from(code).unwrap_or(255)).await;
    let _ = ch.eof().await;
    let _ = ch.close().await;
}

/// `openshell sandbox exec NAME --argv-from-env [-t]` with the session's command.
fn exec_command(name: &str, argv: &[String], env: &[String], tty: bool) -> tokio::process::Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let mut c = tokio::process::Command::new(exe);
    c.args(["sandbox", "exec", name, "--argv-from-env"]);
    if tty {
        c.arg("--tty");
    }
    c.env(
        "OPENSHELL_EXEC_ARGV",
        serde_json::to_string(argv).unwrap_or_default(),
    )
    .env(
        "OPENSHELL_EXEC_ENV",
        serde_json::to_string(env).unwrap_or_default(),
    )
    .env_remove("OPENSHELL_HOST")
    .kill_on_drop(true);
    c
}

/// Without a terminal: stdin, stdout and stderr as three pipes.
async fn with_pipes(
    name: &str,
    argv: Vec<String>,
    env: Vec<String>,
    ch: &mut Channel<Msg>,
) -> Result<i32, String> {
    let mut child = exec_command(name, &argv, &env, false)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start sandbox exec: {e}"))?;
    let mut stdin = child.stdin.take();
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut err = child.stderr.take().ok_or("no stderr")?;
    let mut w_out = ch.make_writer();
    let mut w_err = ch.make_writer_ext(Some(1));
    let pump_out = tokio::spawn(async move { tokio::io::copy(&mut out, &mut w_out).await });
    let pump_err = tokio::spawn(async move { tokio::io::copy(&mut err, &mut w_err).await });
    let status = loop {
        tokio::select! {
            msg = ch.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(&data).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Some(ChannelMsg::Eof) => stdin = None,
                Some(ChannelMsg::Signal { signal }) => signal_child(&child, &signal),
                None | Some(ChannelMsg::Close) => {
                    // The client went away: ask the command to end, as a hang-up does.
                    drop(stdin.take());
                    if let Some(pid) = child.id() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGTERM,
                        );
                    }
                    break child.wait().await;
                }
                Some(_) => {}
            },
            st = child.wait() => break st,
        }
    };
    let _ = pump_out.await;
    let _ = pump_err.await;
    let st = status.map_err(|e| format!("wait for sandbox exec: {e}"))?;
    Ok(code_of(st))
}

/// With a terminal: a host pty is the child's stdin, stdout and stderr.
async fn with_pty(
    name: &str,
    argv: Vec<String>,
    env: Vec<String>,
    cols: u16,
    rows: u16,
    ch: &mut Channel<Msg>,
) -> Result<i32, String> {
    use std::os::fd::AsFd;
    let (master, slave, _) =
        openshell_runtime::api::session::open_pty().map_err(|e| format!("host pty: {e}"))?;
    let _ = openshell_runtime::api::session::set_winsize(master.as_fd(), cols, rows);
    let dup = |fd: &std::os::fd::OwnedFd| {
        fd.try_clone()
            .map(Stdio::from)
            .map_err(|e| format!("host pty: {e}"))
    };
    let mut child = exec_command(name, &argv, &env, true)
        .stdin(dup(&slave)?)
        .stdout(dup(&slave)?)
        .stderr(Stdio::from(slave))
        .spawn()
        .map_err(|e| format!("start sandbox exec: {e}"))?;
    let winsize_fd = master.try_clone().map_err(|e| format!("host pty: {e}"))?;
    let reader = std::fs::File::from(master);
    let mut writer = tokio::fs::File::from_std(reader.try_clone().map_err(|e| e.to_string())?);
    let mut reader = tokio::fs::File::from_std(reader);
    let mut w_out = ch.make_writer();
    // The master reads EIO once every slave is closed: the end of the output.
    let pump = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if w_out.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    // Input goes to the pty from a task of its own, so that a command that stops
    // reading never keeps this loop from seeing it end (or the client go). What waits
    // is held here, in order; past PTY_PENDING the channel is not read (SSH's own flow
    // control then holds the client).
    const PTY_PENDING: usize = 8 << 20;
    let (to_pty, mut queue) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        while let Some(data) = queue.recv().await {
            if writer.write_all(&data).await.is_err() {
                return;
            }
            let _ = writer.flush().await;
        }
    });
    let mut pending: std::collections::VecDeque<Vec<u8>> = Default::default();
    let mut pending_bytes = 0usize;
    let status = loop {
        tokio::select! {
            permit = to_pty.reserve(), if !pending.is_empty() => {
                if let (Ok(permit), Some(data)) = (permit, pending.pop_front()) {
                    pending_bytes -= data.len();
                    permit.send(data);
                } else {
                    pending.clear();
                    pending_bytes = 0;
                }
            }
            msg = ch.wait(), if pending_bytes < PTY_PENDING => match msg {
                Some(ChannelMsg::Data { data }) => {
                    pending_bytes += data.len();
                    pending.push_back(data.to_vec());
                }
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    let c = u16::try_from(col_width).unwrap_or(u16::MAX);
                    let r = u16::try_from(row_height).unwrap_or(u16::MAX);
                    let _ = openshell_runtime::api::session::set_winsize(winsize_fd.as_fd(), c, r);
                    // The child has no controlling terminal: tell it the size changed.
                    signal_child(&child, &russh::Sig::Custom("WINCH".into()));
                }
                Some(ChannelMsg::Signal { signal }) => signal_child(&child, &signal),
                None | Some(ChannelMsg::Close) => {
                    signal_child(&child, &russh::Sig::HUP);
                    break child.wait().await;
                }
                Some(_) => {}
            },
            st = child.wait() => break st,
        }
    };
    let _ = pump.await;
    let st = status.map_err(|e| format!("wait for sandbox exec: {e}"))?;
    Ok(code_of(st))
}

/// Pass an SSH `signal` request on to the `sandbox exec` child (which passes it on
/// into the sandbox).
fn signal_child(child: &tokio::process::Child, sig: &russh::Sig) {
    use nix::sys::signal::Signal as S;
    let s = match sig {
        russh::Sig::HUP => S::SIGHUP,
        russh::Sig::INT => S::SIGINT,
        russh::Sig::TERM => S::SIGTERM,
        russh::Sig::KILL => S::SIGKILL,
        russh::Sig::QUIT => S::SIGQUIT,
        russh::Sig::USR1 => S::SIGUSR1,
        russh::Sig::Custom(n) if n == "WINCH" => S::SIGWINCH,
        _ => return,
    };
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), s);
    }
}

fn code_of(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code()
        .or_else(|| st.signal().map(|s| 128 + s))
        .unwrap_or(255)
}
