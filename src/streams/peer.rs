//! Noticing at once that a streaming client went away. A server-sent event stream only
//! writes (a keep-alive every 15 s), and a write to a connection whose peer has closed
//! succeeds once more before it fails: such a stream would hold its socket, task and
//! subscription for up to 30 s. The connection's socket is remembered when it is
//! accepted, and a stream watches a duplicate of it for the peer's close or reset.

use std::any::Any;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use actix_web::dev::Extensions;
use actix_web::HttpRequest;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The raw socket of a plain-TCP connection (valid while its requests run).
#[derive(Clone, Copy)]
struct PeerSocket(RawFd);

/// `HttpServer::on_connect`: remembers the socket of a plain-TCP connection. (A TLS
/// connection needs no watch: its TLS layer reads the peer's close or reset at once,
/// and the stream ends; see the streams tests.)
pub fn remember_socket(connection: &dyn Any, data: &mut Extensions) {
    if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        data.insert(PeerSocket(tcp.as_raw_fd()));
    }
}

/// A watch on the client's side of a request's connection.
pub struct PeerWatch {
    socket: Option<AsyncFd<OwnedFd>>,
}

impl PeerWatch {
    /// Watches the connection of `req` (called while the request runs, so the
    /// remembered socket is still this connection's). Without one, never fires.
    pub fn of(req: &HttpRequest) -> Self {
        let socket = req.conn_data::<PeerSocket>().and_then(|PeerSocket(fd)| {
            // SAFETY: the connection (and so its fd) is open while its request runs.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
            let owned = borrowed.try_clone_to_owned().ok()?;
            // SAFETY: `owned` is an open fd that the AsyncFd owns for its whole life.
            unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }.ok()
        });
        Self { socket }
    }

    /// Resolves when the client closed or reset the connection.
    pub async fn gone(&self) {
        let Some(socket) = &self.socket else { return std::future::pending().await };
        loop {
            let Ok(mut ready) = socket.readable().await else { return };
            // The peer's FIN, even behind bytes nobody read yet (a TLS close_notify).
            if ready.ready().is_read_closed() {
                return;
            }
            let mut byte = [0u8; 1];
            // SAFETY: a peek into a local buffer on a socket we hold.
            let n = unsafe {
                libc::recv(
                    socket.get_ref().as_raw_fd(),
                    byte.as_mut_ptr().cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            match n {
                0 => return,
                n if n < 0 => {
                    if std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
                        return;
                    }
                    ready.clear_ready();
                }
                // The client sent more (a pipelined request): not gone; wait for the next change.
                _ => ready.clear_ready(),
            }
        }
    }
}
