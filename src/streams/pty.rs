//! `GET /v{N}/stream/kernel/{token}/pty`: a terminal in the session's kernel, as
//! a WebSocket proxied to the agent's PTY endpoint.
//!
//! Who may open it: a request signed like any other (a GET with an empty body);
//! or, for browsers, which cannot set headers on a WebSocket, a single-use ticket
//! from `POST /v{N}/stream/tickets` (signed, valid 30 seconds) passed as
//! `?ticket=`; or, only with `manager.allow_unsigned_pty`, anyone (1.0.x clients).
//!
//! The agent is connected before the client's upgrade is accepted: if the agent
//! refuses, the client gets a plain HTTP error and that agent connection is
//! dropped, never reused (the lesson of CVE-2018-1002105).

use std::time::Duration;

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::hub::Event;
use crate::error::{ApiError, Error, Problem};
use crate::middleware::Authenticated;
use crate::state::AppState;

/// How long a stream ticket may wait to be used.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// A client that cannot take a frame for this long is disconnected: it must not
/// hold the terminal (or the proxy's memory) back.
pub const SLOW_CLIENT: Duration = Duration::from_secs(5);
/// The largest stdin frame accepted, in bytes after decoding.
const MAX_STDIN: usize = 64 * 1024;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/stream/tickets", web::post().to(ticket)).route("/stream/kernel/{token}/pty", web::get().to(pty));
}

#[derive(Deserialize)]
struct TicketRequest {
    kernel: String,
}

#[derive(Deserialize, serde::Serialize)]
struct TicketValue {
    access_key: String,
    token: String,
}

async fn ticket(auth: Authenticated, state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let request: TicketRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(Problem::InvalidApiParams).with_detail(e.to_string()))?;
    let access_key = auth.keypair.access_key.clone();
    // Through the session's actor, as every other session route (404 for anyone else's).
    crate::sessions::require(&state, &access_key, &request.kernel).await?;
    let bytes: [u8; 24] = rand::rng().random();
    let ticket = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let value = serde_json::to_string(&TicketValue { access_key, token: request.kernel })
        .map_err(|e| Error::ConfigStore(e.to_string()))?;
    state.stores.tickets.put_ticket(&ticket, &value, TICKET_TTL).await?;
    Ok(HttpResponse::Created().json(json!({"ticket": ticket, "expiresIn": TICKET_TTL.as_secs()})))
}

#[derive(Deserialize)]
struct PtyPath {
    token: String,
}

#[derive(Deserialize)]
struct PtyQuery {
    ticket: Option<String>,
}

/// Whether an unsigned request may reach the PTY route (its handler then checks
/// the ticket or the compatibility setting).
pub fn is_pty_upgrade(path: &str) -> bool {
    (path.starts_with("/v") || path.starts_with("/stream/"))
        && path.ends_with("/pty")
        && path.contains("/stream/kernel/")
}

async fn pty(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    path: web::Path<PtyPath>,
    query: web::Query<PtyQuery>,
) -> Result<HttpResponse, ApiError> {
    let signed = req.extensions().get::<Authenticated>().map(|auth| auth.keypair.access_key.clone());
    let owner = match (signed, &query.ticket) {
        (Some(access_key), _) => Some(access_key),
        (None, Some(ticket)) => {
            let value = state.stores.tickets.take_ticket(ticket).await?.ok_or_else(|| {
                ApiError::new(Problem::AuthFailed).with_detail("unknown, used or expired stream ticket")
            })?;
            let value: TicketValue = serde_json::from_str(&value).map_err(|_| ApiError::new(Problem::AuthFailed))?;
            if value.token != path.token {
                return Err(ApiError::new(Problem::AuthFailed).with_detail("the ticket is for another session"));
            }
            Some(value.access_key)
        }
        (None, None) if state.settings.manager.allow_unsigned_pty => None,
        (None, None) => return Err(ApiError::new(Problem::AuthFailed).with_detail("sign the upgrade or use a ticket")),
    };
    let kernel = match &owner {
        Some(access_key) => crate::sessions::row(&state, access_key, &path.token).await?,
        // Unsigned development mode: the live session of that name, whoever owns it.
        None => std::sync::Arc::new(
            crate::ledger::live_session_named(&state.db, &path.token)
                .await?
                .ok_or_else(|| ApiError::new(Problem::KernelNotFound))?,
        ),
    };
    let agent_addr = kernel.agent_addr.clone().ok_or_else(|| ApiError::new(Problem::KernelNotFound))?;

    let url = format!("ws://{agent_addr}/kernels/{}/pty", kernel.id);
    // awc's connector allows 100 connections by default, and an upgraded stream
    // holds its connection for its whole life: no limit here.
    let client = awc::Client::builder().connector(awc::Connector::new().limit(0)).finish();
    let connect =
        client.ws(url).bearer_auth(state.settings.manager.cluster_secret.expose()).max_frame_size(1 << 20).connect();
    let agent = match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok((_, framed))) => framed,
        Ok(Err(awc::error::WsClientError::InvalidResponseStatus(status))) if status.as_u16() == 404 => {
            return Err(ApiError::new(Problem::KernelNotFound));
        }
        Ok(Err(error)) => {
            let mut failure = ApiError::new(Problem::KernelExecutionFailed);
            failure.agent_details =
                Some(Box::new(crate::agent_client::AgentError::Failure(error.to_string()).details()));
            return Err(failure);
        }
        Err(_) => {
            let mut failure = ApiError::new(Problem::KernelExecutionFailed);
            failure.agent_details = Some(Box::new(crate::agent_client::AgentError::Timeout.details()));
            return Err(failure);
        }
    };
    let (response, session, messages) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::new(Problem::GenericBadRequest).with_detail(e.to_string()))?;
    let events = state.event_hub.subscribe();
    state.core.activity.note(kernel.id);
    let activity = state.core.activity.clone();
    actix_web::rt::spawn(relay(session, messages, agent, events, kernel.id, activity));
    Ok(response)
}

/// A client frame of the contract.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum ClientFrame {
    Stdin { chars: String },
    Resize { rows: u16, cols: u16 },
    Ping,
    Restart,
}

/// Checks a client frame before it reaches the agent.
fn validate(text: &str) -> Result<(), &'static str> {
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(ClientFrame::Stdin { chars }) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(chars.as_bytes())
                .map_err(|_| "stdin is not base64")?;
            if bytes.len() > MAX_STDIN {
                return Err("stdin frame too large");
            }
            Ok(())
        }
        Ok(ClientFrame::Resize { rows, cols }) if (1..=1000).contains(&rows) && (1..=1000).contains(&cols) => Ok(()),
        Ok(ClientFrame::Resize { .. }) => Err("rows and cols must be 1 to 1000"),
        Ok(ClientFrame::Ping | ClientFrame::Restart) => Ok(()),
        Err(_) => Err("unknown or malformed frame"),
    }
}

async fn relay(
    mut client: actix_ws::Session,
    mut messages: actix_ws::MessageStream,
    agent: actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>,
    mut events: broadcast::Receiver<Event>,
    kernel_id: Uuid,
    activity: std::sync::Arc<crate::scheduler::Activity>,
) {
    let (mut agent_tx, mut agent_rx) = agent.split();
    // Traffic either way is a use of the session (at most one note a second).
    let mut noted = std::time::Instant::now();
    let mut note = || {
        if noted.elapsed() >= Duration::from_secs(1) {
            noted = std::time::Instant::now();
            activity.note(kernel_id);
        }
    };
    let (code, reason) = loop {
        tokio::select! {
            message = messages.next() => match message.inspect(|_| note()) {
                Some(Ok(Message::Text(text))) => {
                    if let Err(why) = validate(&text) {
                        let _ = client.text(json!({"type": "error", "data": why}).to_string()).await;
                        break (CloseCode::Policy, "malformed frame");
                    }
                    if agent_tx.send(awc::ws::Message::Text(text)).await.is_err() {
                        break (CloseCode::Away, "the terminal closed");
                    }
                }
                Some(Ok(Message::Ping(bytes))) => {
                    let _ = client.pong(&bytes).await;
                }
                Some(Ok(Message::Binary(_))) => {
                    let _ = client.text(json!({"type": "error", "data": "binary frames are not accepted"}).to_string()).await;
                    break (CloseCode::Unsupported, "binary frame");
                }
                Some(Ok(Message::Close(_))) | None => break (CloseCode::Normal, "the client closed"),
                Some(Err(_)) => break (CloseCode::Protocol, "protocol error"),
                Some(Ok(_)) => {}
            },
            frame = agent_rx.next() => match frame.inspect(|_| note()) {
                Some(Ok(awc::ws::Frame::Text(bytes))) => {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    match tokio::time::timeout(SLOW_CLIENT, client.text(text)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break (CloseCode::Normal, "the client closed"),
                        Err(_) => break (CloseCode::Policy, "the client is too slow"),
                    }
                }
                Some(Ok(awc::ws::Frame::Ping(bytes))) => {
                    let _ = agent_tx.send(awc::ws::Message::Pong(bytes)).await;
                }
                Some(Ok(awc::ws::Frame::Close(_))) | None | Some(Err(_)) => break (CloseCode::Away, "the terminal closed"),
                Some(Ok(_)) => {}
            },
            event = events.recv() => match event {
                Ok(event) if event.kernel_id == kernel_id && matches!(event.name.as_str(), "terminated" | "error") => {
                    break (CloseCode::Away, "the session ended");
                }
                Err(broadcast::error::RecvError::Closed) => break (CloseCode::Away, "the manager is shutting down"),
                _ => {}
            },
        }
    };
    let _ = agent_tx.send(awc::ws::Message::Close(None)).await;
    let _ = client.close(Some(CloseReason { code, description: Some(reason.to_owned()) })).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_checked() {
        assert!(validate(r#"{"type":"stdin","chars":"ZWNobyBoaQo="}"#).is_ok());
        assert!(validate(r#"{"type":"resize","rows":24,"cols":80}"#).is_ok());
        assert!(validate(r#"{"type":"ping"}"#).is_ok());
        for bad in [
            "not json",
            r#"{"type":"stdin","chars":"***"}"#,
            r#"{"type":"resize","rows":0,"cols":80}"#,
            r#"{"type":"shutdown"}"#,
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pty_paths_are_recognized() {
        assert!(is_pty_upgrade("/v3/stream/kernel/abc/pty"));
        assert!(is_pty_upgrade("/stream/kernel/abc/pty"));
        assert!(!is_pty_upgrade("/v3/stream/kernel/abc/events"));
        assert!(!is_pty_upgrade("/v3/kernel/abc"));
    }
}
