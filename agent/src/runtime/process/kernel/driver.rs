//! The pipe driver of an interpreter: writes command frames to the runner, reads its
//! output and event pipes, and hands what it reads to the run state machine.

use super::*;

/// Writes command frames to the runner's fd 3 in order.
pub(super) async fn write_commands(mut pipe: pipe::Sender, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    use tokio::io::AsyncWriteExt;
    while let Some(frame) = rx.recv().await {
        if pipe.write_all(&frame).await.is_err() {
            break;
        }
    }
}

/// The driver of one interpreter generation.
pub(super) async fn drive(
    kernel: Arc<Kernel>,
    generation: u64,
    mut child: tokio::process::Child,
    mut out: pipe::Receiver,
    mut err: pipe::Receiver,
    mut evt: pipe::Receiver,
) {
    let (mut out_buf, mut err_buf, mut evt_buf) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut scratch = vec![0u8; 64 * 1024];
    let mut lines: Vec<u8> = Vec::new();
    let (mut out_open, mut err_open, mut evt_open) = (true, true, true);
    loop {
        let deadline = kernel.deadline(generation);
        tokio::select! {
            r = out.read(&mut out_buf), if out_open => match r {
                Ok(n) if n > 0 => kernel.output(generation, Stream::Stdout, &out_buf[..n]),
                _ => out_open = false,
            },
            r = err.read(&mut err_buf), if err_open => match r {
                Ok(n) if n > 0 => kernel.output(generation, Stream::Stderr, &err_buf[..n]),
                _ => err_open = false,
            },
            r = evt.read(&mut evt_buf), if evt_open => match r {
                Ok(n) if n > 0 => {
                    lines.extend_from_slice(&evt_buf[..n]);
                    while let Some(pgid) = handle_frames(&kernel, generation, &mut lines, &out, &err, &mut scratch) {
                        kernel.interrupt_group(pgid).await;
                        kernel.repeat_interrupt(pgid);
                    }
                }
                _ => evt_open = false,
            },
            status = child.wait() => {
                drain(&kernel, generation, Stream::Stdout, &out, &mut scratch);
                drain(&kernel, generation, Stream::Stderr, &err, &mut scratch);
                drain_events(&evt, &mut lines, &mut scratch);
                // The process is gone: a held interrupt has nothing left to reach.
                while handle_frames(&kernel, generation, &mut lines, &out, &err, &mut scratch).is_some() {}
                kernel.exited(generation, status);
                return;
            },
            _ = sleep_until_opt(deadline) => kernel.timed_out(generation),
            _ = kernel.rearm.notified() => {},
        }
    }
}

pub(super) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Handles the complete frames (`<kind> <length>\n<payload>`) in `frames`, draining
/// stdout/stderr before each, until one asks for an interrupt: then returns the process
/// group to signal, leaving the frames after it for the next call.
pub(super) fn handle_frames(
    kernel: &Kernel,
    generation: u64,
    frames: &mut Vec<u8>,
    out: &pipe::Receiver,
    err: &pipe::Receiver,
    buf: &mut [u8],
) -> Option<u32> {
    loop {
        let Some(end) = frames.iter().position(|&b| b == b'\n') else {
            if frames.len() > 256 {
                desync(kernel, frames);
            }
            return None;
        };
        let header = String::from_utf8_lossy(&frames[..end]).into_owned();
        let Some((kind, len)) = header
            .split_once(' ')
            .and_then(|(k, l)| l.parse::<usize>().ok().map(|l| (k.to_owned(), l)))
            .filter(|(_, l)| *l <= MAX_FRAME)
        else {
            desync(kernel, frames);
            return None;
        };
        if frames.len() < end + 1 + len {
            return None;
        }
        let payload: Vec<u8> = frames[end + 1..end + 1 + len].to_vec();
        frames.drain(..end + 1 + len);
        drain(kernel, generation, Stream::Stdout, out, buf);
        drain(kernel, generation, Stream::Stderr, err, buf);
        if let Some(pgid) = kernel.frame(generation, &kind, &payload) {
            return Some(pgid);
        }
    }
}

/// Garbage on the event pipe (user code can write to fd 4): drop it and carry on.
pub(super) fn desync(kernel: &Kernel, frames: &mut Vec<u8>) {
    tracing::warn!(kernel = %kernel.id, "dropping unparsable runner frames");
    frames.clear();
}

/// Reads what is in a pipe right now, without waiting (the fd is non-blocking). Bypasses
/// tokio's readiness cache on purpose: data written before a frame must be seen now.
pub(super) fn drain(kernel: &Kernel, generation: u64, stream: Stream, pipe: &pipe::Receiver, buf: &mut [u8]) {
    // Bounded, so that a writer that never stops cannot starve the driver.
    for _ in 0..64 {
        match nix::unistd::read(pipe.as_fd(), buf) {
            Ok(n) if n > 0 => kernel.output(generation, stream, &buf[..n]),
            _ => return,
        }
    }
}

pub(super) fn drain_events(pipe: &pipe::Receiver, lines: &mut Vec<u8>, buf: &mut [u8]) {
    for _ in 0..1024 {
        match nix::unistd::read(pipe.as_fd(), buf) {
            Ok(n) if n > 0 => lines.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
}

pub(in crate::runtime::process) fn pipe_pair() -> RuntimeResult<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RuntimeError::Failure(anyhow::anyhow!("pipe: {e}")))
}

/// A command frame for the Python runner: `<op> <length>\n<parts joined by \n>`.
pub(super) fn frame_bytes(op: &str, parts: &[&str]) -> Vec<u8> {
    let payload = parts.join("\n");
    let mut bytes = format!("{op} {}\n", payload.len()).into_bytes();
    bytes.extend_from_slice(payload.as_bytes());
    bytes
}

pub(super) fn send_frame(st: &State, frame: Vec<u8>) {
    if let Some(p) = &st.proc {
        let _ = p.commands.send(frame);
    }
}
