//! `GET /kernels/{id}/pty`: a WebSocket bridged to a bash on a pseudo terminal.
//!
//! Client frames: `{"type":"stdin","chars":<base64>}`, `{"type":"resize","rows","cols"}`,
//! `{"type":"ping"}`, `{"type":"restart"}`. Server frames: `{"type":"out","data":<base64>}`.

use std::os::fd::{AsFd, OwnedFd};

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::unix::AsyncFd;

use super::RpcState;
use crate::error::AgentError;
use crate::runtime::PtyHandle;

/// Registers the PTY route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/kernels/{id}/pty", web::get().to(pty));
}

/// A client frame.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientFrame {
    Stdin { chars: String },
    Resize { rows: u16, cols: u16 },
    Ping,
    Restart,
}

async fn pty(
    state: web::Data<RpcState>,
    id: web::Path<String>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, AgentError> {
    let id = id.into_inner();
    let handle = state.runtime.pty(&id).await?;
    let (response, session, messages) =
        actix_ws::handle(&req, body).map_err(|e| AgentError::InvalidParams(e.to_string()))?;
    actix_web::rt::spawn(bridge(state, id, handle, session, messages));
    Ok(response)
}

async fn bridge(
    state: web::Data<RpcState>,
    id: String,
    handle: PtyHandle,
    mut session: actix_ws::Session,
    mut messages: actix_ws::MessageStream,
) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut pid = handle.pid;
    let Ok(mut master) = register(handle.master) else {
        let _ = session.close(None).await;
        return;
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            msg = messages.next() => {
                let text = match msg {
                    Some(Ok(actix_ws::Message::Text(text))) => text,
                    Some(Ok(actix_ws::Message::Ping(bytes))) => {
                        let _ = session.pong(&bytes).await;
                        continue;
                    }
                    Some(Ok(actix_ws::Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                match serde_json::from_str::<ClientFrame>(&text) {
                    Ok(ClientFrame::Stdin { chars }) => {
                        if let Ok(bytes) = b64.decode(chars.as_bytes()) {
                            if write_all(&master, &bytes).await.is_err() {
                                break;
                            }
                        }
                    }
                    Ok(ClientFrame::Resize { rows, cols }) => {
                        let _ = state.runtime.resize_pty(master.get_ref().as_fd(), rows, cols);
                    }
                    Ok(ClientFrame::Ping) => {}
                    Ok(ClientFrame::Restart) => {
                        state.runtime.close_pty(pid);
                        match state.runtime.pty(&id).await.map(|h| (h.pid, register(h.master))) {
                            Ok((new_pid, Ok(fd))) => {
                                pid = new_pid;
                                master = fd;
                            }
                            _ => break,
                        }
                    }
                    Err(_) => {}
                }
            }
            ready = master.readable() => {
                let Ok(mut guard) = ready else { break };
                match guard.try_io(|fd| {
                    nix::unistd::read(fd.get_ref(), &mut buf).map_err(std::io::Error::from)
                }) {
                    Ok(Ok(n)) if n > 0 => {
                        let frame = serde_json::json!({"type": "out", "data": b64.encode(&buf[..n])});
                        if session.text(frame.to_string()).await.is_err() {
                            break;
                        }
                    }
                    // EOF or EIO: the shell is gone (exited, or its kernel was destroyed).
                    Ok(_) => break,
                    Err(_would_block) => {}
                }
            }
        }
    }
    state.runtime.close_pty(pid);
    let _ = session.close(None).await;
}

async fn write_all(fd: &AsyncFd<OwnedFd>, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), bytes).map_err(std::io::Error::from)) {
            Ok(Ok(n)) => bytes = &bytes[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    Ok(())
}

fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the fd is owned by the AsyncFd from here on and is neither closed nor replaced
    // while registered.
    unsafe { AsyncFd::register(fd).map_err(|e| e.into_parts().1) }
}
