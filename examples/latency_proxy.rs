//! A TCP forwarder that adds a fixed latency to every chunk, both ways, in order: the
//! slow Redis of `scripts/bench_manager.sh --production`.
//!
//!     latency_proxy 127.0.0.1:16379 127.0.0.1:6379 50

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (chunks, mut queue) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = queue.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        if chunks.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(chunks);
    let _ = writer.await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, target, delay_ms] = args.as_slice() else {
        anyhow::bail!("usage: latency_proxy LISTEN TARGET DELAY_MS");
    };
    let delay = Duration::from_millis(delay_ms.parse()?);
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (inbound, _) = listener.accept().await?;
        let target = target.clone();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(&target).await else { return };
            let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::join!(pipe(in_read, out_write, delay), pipe(out_read, in_write, delay));
        });
    }
}
