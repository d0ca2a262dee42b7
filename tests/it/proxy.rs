//! A TCP proxy that misbehaves on demand, between trueup and a server it talks to: added
//! latency, a blackhole (bytes go in, nothing comes out), a reset after some bytes, a bandwidth
//! cap. The fault can change while connections are open: a pooled connection meets it too.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Each chunk waits this long before it is passed on.
    Latency(Duration),
    /// Nothing is passed on, either way; connections stay open.
    Blackhole,
    /// The server's answer is cut with a TCP reset after this many bytes (counted per
    /// connection from when the fault is set).
    ResetAfter(usize),
    /// At most this many bytes per second, each way.
    Bandwidth(usize),
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    fault: Arc<Mutex<(Fault, u64)>>,
}

impl FaultProxy {
    /// Listens on a free local port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fault = Arc::new(Mutex::new((Fault::None, 0)));
        let shared = Arc::clone(&fault);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                // SO_LINGER 0: when a reset cuts the connection, closing it sends RST, as a
                // middlebox that drops a connection does.
                let _ = client.set_zero_linger();
                let cut = tokio_util::sync::CancellationToken::new();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, Arc::clone(&shared), false, cut.clone()));
                tokio::spawn(pump(sr, cw, Arc::clone(&shared), true, cut));
            }
        });
        Self { addr, fault }
    }

    pub fn set(&self, fault: Fault) {
        let mut f = self.fault.lock().unwrap();
        *f = (fault, f.1 + 1);
    }

    /// A database URL with its host and port replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let host_start = url
            .find('@')
            .map_or(url.find("://").unwrap() + 3, |i| i + 1);
        let host_end = url[host_start..]
            .find('/')
            .map_or(url.len(), |i| host_start + i);
        format!("{}{}{}", &url[..host_start], self.addr, &url[host_end..])
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    fault: Arc<Mutex<(Fault, u64)>>,
    answers: bool,
    cut: tokio_util::sync::CancellationToken,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let (mut generation, mut passed) = (u64::MAX, 0usize);
    loop {
        let read = tokio::select! {
            r = from.read(&mut buf) => r,
            () = cut.cancelled() => return,
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (now, g) = *fault.lock().unwrap();
        if g != generation {
            (generation, passed) = (g, 0);
        }
        match now {
            Fault::None => {}
            Fault::Latency(d) => tokio::time::sleep(d).await,
            Fault::Blackhole => continue,
            Fault::ResetAfter(limit) if answers && passed + n > limit => {
                let keep = limit.saturating_sub(passed);
                let _ = to.write_all(&buf[..keep]).await;
                cut.cancel();
                return;
            }
            Fault::ResetAfter(_) => {}
            Fault::Bandwidth(per_second) => {
                for chunk in buf[..n].chunks((per_second / 10).max(1)) {
                    if to.write_all(chunk).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                passed += n;
                continue;
            }
        }
        passed += n;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
