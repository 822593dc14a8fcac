//! Listeners for the vTPM's two channels on loopback TCP or Unix sockets, one thread
//! per connection, all sharing the one [`Vtpm`].

use std::io::{self, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::data::{self, Timed, Timeouts};
use crate::{Vtpm, ctrl, error_response, mssim};

/// How long a connection accepted from a listener may sit idle between messages (the
/// VMM's own data socket, passed with `CMD_SET_DATAFD`, and Unix control connections,
/// which QEMU holds for the VM's lifetime, have no idle limit).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the rest of a message may take once its first bytes arrived.
pub const WITHIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a channel listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A loopback TCP address (`tcp:127.0.0.1:2321`; port 0 picks one).
    Tcp(SocketAddr),
    /// A Unix socket path (`unix:/run/vm1/tpm.sock`).
    Unix(PathBuf),
}

/// Errors of endpoint syntax and of starting the listeners.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// An endpoint that does not parse.
    #[error("invalid endpoint {0:?}: expected tcp:HOST:PORT or unix:PATH")]
    Syntax(String),
    /// A TCP endpoint that is not loopback.
    #[error("{0}: the vTPM listens only on loopback addresses")]
    NotLoopback(String),
    /// A configuration that cannot work.
    #[error("{0}")]
    Config(String),
    /// A TCP endpoint without `allow_tcp`.
    #[error(
        "{0}: a TCP endpoint lets every local user reach the TPM (the control channel \
         reads and replaces all its secrets); use unix:PATH, or allow TCP explicitly \
         (--dangerously-allow-tcp) for tests and tools that speak only TCP"
    )]
    TcpNotAllowed(String),
    /// The directory of a Unix socket is not private to this user (or cannot be made).
    #[error("socket directory: {0}")]
    SocketDir(#[from] crate::state::StateError),
    /// Binding failed.
    #[error("cannot listen on {endpoint}: {source}")]
    Bind {
        /// The endpoint.
        endpoint: String,
        /// The error.
        source: io::Error,
    },
}

impl FromStr for Endpoint {
    type Err = ServeError;

    fn from_str(s: &str) -> Result<Self, ServeError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ServeError::Syntax(s.into()));
            }
            return Ok(Self::Unix(path.into()));
        }
        let rest = s
            .strip_prefix("tcp:")
            .ok_or_else(|| ServeError::Syntax(s.into()))?;
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| ServeError::Syntax(s.into()))?;
        let port: u16 = port.parse().map_err(|_| ServeError::Syntax(s.into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = if host == "localhost" {
            IpAddr::from([127, 0, 0, 1])
        } else {
            host.parse().map_err(|_| ServeError::Syntax(s.into()))?
        };
        if !ip.is_loopback() {
            return Err(ServeError::NotLoopback(s.into()));
        }
        Ok(Self::Tcp(SocketAddr::new(ip, port)))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "tcp:{a}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The protocol the two channels speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// swtpm's: data channel (raw commands) and control channel (`CMD_*`).
    Swtpm,
    /// The simulator's: command port and platform port.
    Mssim,
}

/// What to listen on.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The protocol.
    pub protocol: Protocol,
    /// The data channel (swtpm; optional when QEMU passes it over the control
    /// channel) or the command port (mssim).
    pub server: Option<Endpoint>,
    /// The control channel (swtpm) or platform port (mssim); when absent with a TCP
    /// server it is the next port, as tpm2-tss's TCTIs assume.
    pub ctrl: Option<Endpoint>,
    /// Whether TCP endpoints are allowed at all. Any local user can connect to a TCP
    /// port, so this is for tests, benchmarks and tools that speak only TCP; a VM's
    /// vTPM listens on Unix sockets in a private directory, and only its own user
    /// (or root) may connect.
    pub allow_tcp: bool,
    /// Refuse `CMD_SET_LOCALITY` to locality 4 (swtpm's `reject-locality-4`).
    pub refuse_locality_4: bool,
}

impl ServerConfig {
    /// Refuses what this configuration must never do (TCP without `allow_tcp`), before
    /// anything is opened.
    pub fn check(&self) -> Result<(), ServeError> {
        if !self.allow_tcp {
            for ep in self.server.iter().chain(&self.ctrl) {
                if let Endpoint::Tcp(_) = ep {
                    return Err(ServeError::TcpNotAllowed(ep.to_string()));
                }
            }
        }
        Ok(())
    }

    /// A configuration with Unix-socket endpoints only and every locality allowed.
    pub fn new(protocol: Protocol, server: Option<Endpoint>, ctrl: Option<Endpoint>) -> Self {
        Self {
            protocol,
            server,
            ctrl,
            allow_tcp: false,
            refuse_locality_4: false,
        }
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// A connection on either kind of socket.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.flush(),
            Self::Unix(s) => s.flush(),
        }
    }
}

impl Timed for Conn {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_read_timeout(t),
            Self::Unix(s) => s.set_read_timeout(t),
        }
    }
}

impl Conn {
    /// Reads what is available (blocking for the first byte), with a descriptor passed
    /// by `SCM_RIGHTS` on a Unix socket.
    fn recv_with_fd(&mut self, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
        match self {
            Self::Tcp(s) => Ok((s.read(buf)?, None)),
            Self::Unix(s) => {
                use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut cmsg = RecvAncillaryBuffer::new(&mut space);
                let msg = recvmsg(
                    s.as_fd(),
                    &mut [IoSliceMut::new(buf)],
                    &mut cmsg,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                let mut fd = None;
                for m in cmsg.drain() {
                    if let RecvAncillaryMessage::ScmRights(fds) = m {
                        for f in fds {
                            // Keep the first descriptor; any others are closed on drop.
                            if fd.is_none() {
                                fd = Some(f);
                            }
                        }
                    }
                }
                Ok((msg.bytes, fd))
            }
        }
    }
}

impl Listener {
    fn bind(ep: &Endpoint) -> Result<Self, ServeError> {
        let err = |source| ServeError::Bind {
            endpoint: ep.to_string(),
            source,
        };
        match ep {
            Endpoint::Tcp(a) => Ok(Self::Tcp(TcpListener::bind(a).map_err(err)?)),
            Endpoint::Unix(p) => {
                private_dir(p)?;
                // A stale socket of an earlier run is replaced; any other file is not.
                if let Ok(m) = std::fs::symlink_metadata(p) {
                    if m.file_type().is_socket() {
                        let _ = std::fs::remove_file(p);
                    } else {
                        return Err(err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            "exists and is not a socket",
                        )));
                    }
                }
                let l = UnixListener::bind(p).map_err(err)?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
                Ok(Self::Unix(l, p.clone()))
            }
        }
    }

    fn endpoint(&self) -> Endpoint {
        match self {
            Self::Tcp(l) => Endpoint::Tcp(
                l.local_addr()
                    .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0))),
            ),
            Self::Unix(_, p) => Endpoint::Unix(p.clone()),
        }
    }

    fn accept(&self) -> io::Result<Conn> {
        match self {
            Self::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                Ok(Conn::Tcp(s))
            }
            Self::Unix(l, _) => {
                let s = l.accept()?.0;
                // Only this process's user (or root) may talk to the TPM, whatever the
                // permissions of the socket and its directory.
                let peer = rustix::net::sockopt::socket_peercred(&s).map_err(io::Error::from)?;
                let me = rustix::process::geteuid();
                if peer.uid != me && !peer.uid.is_root() {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "refused a connection from uid {} (pid {})",
                            peer.uid.as_raw(),
                            peer.pid.as_raw_nonzero()
                        ),
                    ));
                }
                Ok(Conn::Unix(s))
            }
        }
    }

    fn is_unix(&self) -> bool {
        matches!(self, Self::Unix(..))
    }
}

/// Makes sure the directory of the socket `path` is private (see
/// [`crate::state::private_dir`]): a socket bound inside it is never reachable by
/// another user, not even in the instant before its own mode is set.
fn private_dir(path: &std::path::Path) -> Result<(), ServeError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    Ok(crate::state::private_dir(dir)?)
}

/// Binds `server` and the port after it, retrying when port 0 was asked for and the
/// next port is taken.
fn bind_pair(server: &Endpoint) -> Result<(Listener, Listener), ServeError> {
    let Endpoint::Tcp(addr) = server else {
        return Err(ServeError::Config(
            "a Unix-socket server needs an explicit --ctrl endpoint".into(),
        ));
    };
    for _ in 0..64 {
        let first = Listener::bind(server)?;
        let Endpoint::Tcp(bound) = first.endpoint() else {
            unreachable!("a TCP listener has a TCP endpoint")
        };
        let Some(next) = bound.port().checked_add(1) else {
            continue;
        };
        match Listener::bind(&Endpoint::Tcp(SocketAddr::new(bound.ip(), next))) {
            Ok(second) => return Ok((first, second)),
            Err(e) if addr.port() != 0 => return Err(e),
            Err(_) => continue,
        }
    }
    Err(ServeError::Config(
        "no free pair of consecutive ports was found".into(),
    ))
}

/// A running vTPM server.
pub struct Server {
    server: Option<Endpoint>,
    ctrl: Endpoint,
    done: mpsc::Receiver<()>,
    shared: Arc<Shared>,
    unix_paths: Vec<PathBuf>,
}

/// What the connections of one server share: the TPM, and the one data channel that
/// is served at a time (as swtpm serves one): a second data client waits until the
/// first is done (or idle past [`IDLE_TIMEOUT`]).
struct Shared {
    vtpm: Mutex<Vtpm>,
    data_slot: Mutex<()>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("server", &self.server)
            .field("ctrl", &self.ctrl)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy)]
enum Role {
    Data,
    Ctrl,
    MssimCommand,
    MssimPlatform,
}

impl Server {
    /// Binds the endpoints and starts serving `vtpm` on background threads.
    pub fn start(mut vtpm: Vtpm, config: ServerConfig) -> Result<Self, ServeError> {
        config.check()?;
        vtpm.refuse_locality_4 = config.refuse_locality_4;
        let (server, ctrl) = match (&config.server, &config.ctrl) {
            (Some(s), Some(c)) => (Some(Listener::bind(s)?), Listener::bind(c)?),
            (Some(s), None) => {
                let (a, b) = bind_pair(s)?;
                (Some(a), b)
            }
            (None, Some(c)) if config.protocol == Protocol::Swtpm => (None, Listener::bind(c)?),
            _ => {
                return Err(ServeError::Config(match config.protocol {
                    Protocol::Swtpm => "give --server, --ctrl or both".into(),
                    Protocol::Mssim => {
                        "the mssim protocol needs --server (the command port)".into()
                    }
                }));
            }
        };
        let shared = Arc::new(Shared {
            vtpm: Mutex::new(vtpm),
            data_slot: Mutex::new(()),
        });
        let (tx, done) = mpsc::channel();
        let mut unix_paths = Vec::new();
        let (data_role, ctrl_role) = match config.protocol {
            Protocol::Swtpm => (Role::Data, Role::Ctrl),
            Protocol::Mssim => (Role::MssimCommand, Role::MssimPlatform),
        };
        let server_ep = server.as_ref().map(Listener::endpoint);
        let ctrl_ep = ctrl.endpoint();
        for (l, role) in server
            .into_iter()
            .map(|l| (l, data_role))
            .chain([(ctrl, ctrl_role)])
        {
            if let Listener::Unix(_, p) = &l {
                unix_paths.push(p.clone());
            }
            let (shared, tx) = (shared.clone(), tx.clone());
            std::thread::spawn(move || accept_loop(l, role, shared, tx));
        }
        // Everything the process needs is open: it never gains privileges again.
        let _ = rustix::thread::set_no_new_privs(true);
        Ok(Self {
            server: server_ep,
            ctrl: ctrl_ep,
            done,
            shared,
            unix_paths,
        })
    }

    /// Where the data channel (or command port) listens, if anywhere.
    pub fn server(&self) -> Option<&Endpoint> {
        self.server.as_ref()
    }

    /// Where the control channel (or platform port) listens.
    pub fn ctrl(&self) -> &Endpoint {
        &self.ctrl
    }

    /// Blocks until a client sends `CMD_SHUTDOWN`; the TPM is then stopped.
    pub fn wait(self) {
        let _ = self.done.recv();
        crate::lock(&self.shared.vtpm).engine.stop(true);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for p in &self.unix_paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Connections served at once per listener; more are closed at once (a VM's TPM has
/// one or two clients: its VMM and perhaps a tool).
pub const MAX_CONNECTIONS: usize = 32;

fn accept_loop(l: Listener, role: Role, shared: Arc<Shared>, done: mpsc::Sender<()>) {
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let conn = match l.accept() {
            Ok(c) => c,
            // A caller of another uid: refused (closed), and the next one is served
            // at once.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                tracing::warn!("{e}");
                continue;
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.load(std::sync::atomic::Ordering::SeqCst) >= MAX_CONNECTIONS {
            tracing::warn!("too many connections; closing a new one");
            continue;
        }
        // Unix control connections are QEMU's for the VM's lifetime; every other
        // connection ends when idle.
        let idle = match role {
            Role::Ctrl if l.is_unix() => None,
            _ => Some(IDLE_TIMEOUT),
        };
        active.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (shared, done, active) = (shared.clone(), done.clone(), active.clone());
        std::thread::spawn(move || {
            let mut conn = conn;
            let r = match role {
                Role::Data => {
                    let _slot = shared
                        .data_slot
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    serve_data(&mut conn, &shared.vtpm, idle);
                    Ok(())
                }
                Role::Ctrl => serve_ctrl(conn, &shared, idle, &done),
                Role::MssimCommand => {
                    let _ = conn.set_timeout(idle);
                    mssim::serve_command(&mut conn, &shared.vtpm)
                }
                Role::MssimPlatform => {
                    let _ = conn.set_timeout(idle);
                    mssim::serve_platform(&mut conn, &shared.vtpm)
                }
            };
            if let Err(e) = r {
                tracing::info!("connection ended: {e}");
            }
            active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
    }
}

/// Serves one data channel: one raw command per message ([`data::read_command`]).
fn serve_data(conn: &mut (impl Read + Write + Timed), vtpm: &Mutex<Vtpm>, idle: Option<Duration>) {
    let lock = || crate::lock(vtpm);
    let timeouts = Timeouts {
        idle,
        within: WITHIN_TIMEOUT,
    };
    let mut buf = Vec::new();
    loop {
        let max = lock().max_command();
        buf.resize(max + 1, 0);
        match data::read_command(conn, &mut buf, max, timeouts) {
            Ok(None) => return,
            Ok(Some(n)) => {
                let response = lock().execute(None, &buf[..n]);
                if data::write_response(conn, &response).is_err() {
                    return;
                }
            }
            Err(e) => {
                if let Some(rc) = e.response_code() {
                    lock().log(&format!("data channel: {e}"));
                    if data::write_response(conn, &error_response(rc)).is_err() {
                        return;
                    }
                }
                if !e.recoverable() {
                    return;
                }
            }
        }
    }
}

/// Largest first read of a control message (the biggest fixed request plus a chunk).
const CTRL_CHUNK: usize = 4 + 12 + 4096;

fn serve_ctrl(
    mut conn: Conn,
    shared: &Arc<Shared>,
    idle: Option<Duration>,
    done: &mpsc::Sender<()>,
) -> io::Result<()> {
    let mut chunk = vec![0u8; CTRL_CHUNK];
    loop {
        conn.set_timeout(idle)?;
        let (n, fd) = conn.recv_with_fd(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        let mut msg = chunk[..n].to_vec();
        // The rest of one message must follow promptly (swtpm allows 500 ms).
        conn.set_timeout(Some(Duration::from_secs(2)))?;
        while msg.len() < ctrl::needed(&msg) {
            let want = (ctrl::needed(&msg) - msg.len()).min(chunk.len());
            let n = conn.read(&mut chunk[..want])?;
            if n == 0 {
                return Ok(());
            }
            msg.extend_from_slice(&chunk[..n]);
        }
        let (reply, after) = match ctrl::parse(&msg) {
            Ok(req) => ctrl::handle(&mut crate::lock(&shared.vtpm), req, fd.is_some()),
            Err(code) => (code.to_be_bytes().to_vec(), ctrl::After::Continue),
        };
        conn.write_all(&reply)?;
        conn.flush()?;
        // A payload over the limits was not read: what follows on the connection
        // cannot be told apart from it, so the connection ends here.
        if ctrl::oversize(&msg) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a control payload over the limit; connection closed",
            ));
        }
        match after {
            ctrl::After::Continue => {}
            ctrl::After::Terminate => {
                let _ = done.send(());
                return Ok(());
            }
            ctrl::After::UseDataFd => {
                if let Some(fd) = fd {
                    let mut data = UnixStream::from(fd);
                    let s = shared.clone();
                    std::thread::spawn(move || {
                        let _slot = s
                            .data_slot
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        serve_data(&mut data, &s.vtpm, None);
                        crate::lock(&s.vtpm).data_fd_in_use = false;
                    });
                }
            }
        }
    }
}
