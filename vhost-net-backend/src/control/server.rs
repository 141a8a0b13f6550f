//! The control socket: a unix socket (0600 by default) served on its own event loop; one
//! subscriber holds the listener and the connections, each reading JSON request lines and
//! writing response lines without blocking the loop.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::{info, warn};
use vmm_sys_util::timerfd::TimerFd;

use super::handler;
use super::protocol::{CaptureInfo, Request, Response};
use super::views;
use crate::capture::{PcapNgStream, Tap};
use crate::config::ControlConfig;
use crate::daemon::Daemon;
use crate::event_loop::{self, LoopThread};

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Errors starting the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Its directory could not be made.
    #[error("cannot make the directory {}", .0.display())]
    Directory(PathBuf, #[source] io::Error),
    /// Another daemon serves the path.
    #[error("another process serves {}", .0.display())]
    InUse(PathBuf),
    /// Binding or setting its permissions failed.
    #[error("cannot listen on {}", .0.display())]
    Bind(PathBuf, #[source] io::Error),
    /// The stop eventfd or the thread could not be made.
    #[error("cannot start the control loop")]
    Resource(#[source] io::Error),
}

/// Where the control socket is when the configuration does not say: under /run for root,
/// else under `$XDG_RUNTIME_DIR` (or /tmp/vhost-net-backend-UID).
pub fn default_socket_path() -> PathBuf {
    let uid = crate::sys::euid();
    let dir = if uid == 0 {
        PathBuf::from("/run/vhost-net-backend")
    } else if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR") {
        PathBuf::from(run).join("vhost-net-backend")
    } else {
        PathBuf::from(format!("/tmp/vhost-net-backend-{uid}"))
    };
    dir.join("control.sock")
}

/// A running control socket. Dropping it stops the loop and removes the socket file.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    /// `None` only while it is dropped.
    serving: Option<LoopThread>,
}

impl Server {
    /// Listens on the configured (or default) path and serves `daemon`'s control API.
    pub fn start(daemon: Arc<Daemon>, config: &ControlConfig) -> Result<Server, ServerError> {
        let path = config.socket.clone().unwrap_or_else(default_socket_path);
        let listener = bind(&path, config.mode)?;
        let subscriber = Control {
            daemon,
            listener,
            conns: HashMap::new(),
            owners: HashMap::new(),
        };
        let serving = LoopThread::spawn("control", Box::new(subscriber)).map_err(|e| {
            let _ = std::fs::remove_file(&path);
            ServerError::Resource(e)
        })?;
        info!(socket = %path.display(), mode = format!("{:o}", config.mode), "control socket");
        Ok(Server {
            path,
            serving: Some(serving),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The loop stops before its socket's file goes.
        drop(self.serving.take());
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` with permissions `mode`, replacing a stale socket file that no one serves.
/// On failure no socket file of its making is left.
fn bind(path: &Path, mode: u32) -> Result<UnixListener, ServerError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| ServerError::Directory(dir.to_owned(), e))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse(path.to_owned()));
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |e| ServerError::Bind(path.to_owned(), e);
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    let ready = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .and_then(|()| listener.set_nonblocking(true));
    if let Err(e) = ready {
        // The file is ours: no one else serves it.
        let _ = std::fs::remove_file(path);
        return Err(bind_err(e));
    }
    Ok(listener)
}

/// One client connection.
struct Conn {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// The client closed its side (or sent too much): close once the output is written.
    closing: bool,
    /// The capture this connection streams, if it asked for one.
    capture: Option<CaptureStream>,
}

/// A capture streamed to a connection.
struct CaptureStream {
    tap: Arc<Tap>,
    pcapng: PcapNgStream,
    /// Frames still to send, if counted.
    remaining: Option<u64>,
    /// Fires when the duration is over.
    timer: Option<TimerFd>,
}

/// The control socket's subscriber: the listener and every connection.
struct Control {
    daemon: Arc<Daemon>,
    listener: UnixListener,
    conns: HashMap<RawFd, Conn>,
    /// A capture's eventfd or timer, and the connection it belongs to.
    owners: HashMap<RawFd, RawFd>,
}

impl Control {
    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if let Err(e) = ops.add(Events::new(&stream, EventSet::IN)) {
                        warn!(error = ?e, "a control connection cannot be watched");
                        continue;
                    }
                    let conn = Conn {
                        stream,
                        input: Vec::new(),
                        output: Vec::new(),
                        closing: false,
                        capture: None,
                    };
                    self.conns.insert(fd, conn);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return warn!(error = %e, "accepting a control connection failed"),
            }
        }
    }

    /// Reads what is there, answers complete lines, writes what it can. Returns whether the
    /// connection stays open.
    fn serve(&mut self, fd: RawFd, events: EventSet, ops: &mut EventOps) -> bool {
        let daemon = Arc::clone(&self.daemon);
        let Some(conn) = self.conns.get_mut(&fd) else {
            return false;
        };
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP) {
            conn.read();
            while let Some(line) = conn.next_line() {
                if conn.capture.is_some() {
                    // A capturing connection takes no more requests.
                    continue;
                }
                let response = match serde_json::from_slice::<Request>(&line) {
                    Ok(Request::Capture {
                        port,
                        count,
                        duration_ms,
                    }) => match start_capture(&daemon, &port, count, duration_ms) {
                        Ok((info, capture)) => {
                            watch(ops, &mut self.owners, fd, &capture);
                            conn.capture = Some(capture);
                            Response::Ok(serde_json::to_value(info).unwrap_or_default())
                        }
                        Err(e) => Response::Error(e),
                    },
                    _ => answer(&daemon, &line),
                };
                conn.respond(&response);
            }
            if conn.input.len() > MAX_REQUEST {
                conn.respond(&Response::Error(format!(
                    "request longer than {MAX_REQUEST} bytes"
                )));
                conn.closing = true;
            }
        }
        if events.contains(EventSet::ERROR) {
            return false;
        }
        conn.write() && !(conn.closing && conn.output.is_empty())
    }
}

/// Starts capturing `port` for a connection.
fn start_capture(
    daemon: &Daemon,
    port: &str,
    count: Option<u64>,
    duration_ms: Option<u64>,
) -> Result<(CaptureInfo, CaptureStream), String> {
    let id = views::find_port(daemon, port)?;
    let socket = daemon
        .port_report(id)
        .map(|r| r.config.socket.display().to_string())
        .unwrap_or_default();
    let interface = format!("port{}", id.0);
    let pcapng = PcapNgStream::new(&interface, &socket).map_err(|e| e.to_string())?;
    let timer = match duration_ms {
        None => None,
        Some(ms) => {
            let mut t = TimerFd::new().map_err(|e| e.to_string())?;
            t.reset(Duration::from_millis(ms.max(1)), None)
                .map_err(|e| e.to_string())?;
            Some(t)
        }
    };
    let tap = daemon.captures().open(id).map_err(|e| e.to_string())?;
    info!(port = id.0, "capture started");
    let info = CaptureInfo {
        port: id.0,
        interface,
    };
    Ok((
        info,
        CaptureStream {
            tap,
            pcapng,
            remaining: count,
            timer,
        },
    ))
}

/// Watches a capture's eventfd and timer for connection `conn`.
fn watch(ops: &mut EventOps, owners: &mut HashMap<RawFd, RawFd>, conn: RawFd, c: &CaptureStream) {
    let mut fds = vec![c.tap.wake_fd().as_raw_fd()];
    fds.extend(c.timer.as_ref().map(AsRawFd::as_raw_fd));
    for fd in fds {
        if ops.add(Events::new_raw(fd, EventSet::IN)).is_ok() {
            owners.insert(fd, conn);
        }
    }
}

impl Control {
    /// Moves a capture's frames into its connection's output; ends the capture when its count
    /// or time is up.
    fn pump(&mut self, conn_fd: RawFd, timer_fired: bool, ops: &mut EventOps) {
        let Some(conn) = self.conns.get_mut(&conn_fd) else {
            return;
        };
        let Some(c) = conn.capture.as_mut() else {
            return;
        };
        let (frames, mut dropped) = c.tap.take();
        for frame in &frames {
            if c.remaining == Some(0) {
                break;
            }
            if c.pcapng.push(frame, dropped).is_ok() {
                dropped = 0;
                c.remaining = c.remaining.map(|n| n - 1);
            }
        }
        conn.output.extend(c.pcapng.take());
        if timer_fired || c.remaining == Some(0) {
            conn.closing = true;
            self.end_capture(conn_fd, ops);
        }
    }

    /// Stops a connection's capture, if any.
    fn end_capture(&mut self, conn_fd: RawFd, ops: &mut EventOps) {
        let Some(c) = self.conns.get_mut(&conn_fd).and_then(|c| c.capture.take()) else {
            return;
        };
        self.daemon.captures().close(&c.tap);
        let mut fds = vec![c.tap.wake_fd().as_raw_fd()];
        fds.extend(c.timer.as_ref().map(AsRawFd::as_raw_fd));
        for fd in fds {
            let _ = ops.remove(Events::empty_raw(fd));
            self.owners.remove(&fd);
        }
        info!(port = c.tap.port().0, "capture ended");
    }
}

/// The response to one request line.
fn answer(daemon: &Daemon, line: &[u8]) -> Response {
    match serde_json::from_slice::<Request>(line) {
        Ok(request) => handler::handle(daemon, request),
        Err(e) => Response::Error(format!("bad request: {e}")),
    }
}

impl Conn {
    fn read(&mut self) {
        if event_loop::read_available(&mut self.stream, &mut self.input, MAX_REQUEST) {
            self.closing = true;
        }
    }

    fn next_line(&mut self) -> Option<Vec<u8>> {
        let end = self.input.iter().position(|&b| b == b'\n')?;
        let mut line: Vec<u8> = self.input.drain(..=end).collect();
        line.pop();
        Some(line)
    }

    fn respond(&mut self, response: &Response) {
        let text = serde_json::to_vec(response).unwrap_or_else(|e| {
            format!("{{\"error\":\"cannot encode the response: {e}\"}}").into_bytes()
        });
        self.output.extend_from_slice(&text);
        self.output.push(b'\n');
    }

    /// Writes pending output. Returns false when the connection failed.
    fn write(&mut self) -> bool {
        event_loop::write_pending(&mut self.stream, &mut self.output)
    }
}

impl MutEventSubscriber for Control {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut fd = events.fd();
        if fd == self.listener.as_raw_fd() {
            return self.accept(ops);
        }
        let open = match self.owners.get(&fd).copied() {
            Some(conn_fd) => {
                let timer = self
                    .conns
                    .get(&conn_fd)
                    .and_then(|c| c.capture.as_ref())
                    .and_then(|c| c.timer.as_ref())
                    .is_some_and(|t| t.as_raw_fd() == fd);
                fd = conn_fd;
                self.pump(conn_fd, timer, ops);
                self.conns
                    .get_mut(&conn_fd)
                    .is_some_and(|c| c.write() && !(c.closing && c.output.is_empty()))
            }
            None => self.serve(fd, events.event_set(), ops),
        };
        if !open {
            self.end_capture(fd, ops);
            if let Some(conn) = self.conns.remove(&fd) {
                let _ = ops.remove(Events::empty(&conn.stream));
            }
            return;
        }
        let Some(conn) = self.conns.get(&fd) else {
            return;
        };
        let wanted = match (conn.closing, conn.output.is_empty()) {
            (true, _) => EventSet::OUT,
            (false, true) => EventSet::IN,
            (false, false) => EventSet::IN | EventSet::OUT,
        };
        let _ = ops.modify(Events::new(&conn.stream, wanted));
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            warn!(error = ?e, "the control socket cannot be watched");
        }
    }
}
