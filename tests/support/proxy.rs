//! A TCP proxy in front of a relay that a test can cut: every connection through it is
//! copied both ways until [`CutProxy::cut`] drops them all at once, as a network outage or
//! a NAT that forgets its mappings would. New connections are taken as before (unless
//! [`CutProxy::refuse`] is on), so an endpoint that reconnects gets through.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct CutProxy {
    pub addr: SocketAddr,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    refusing: Arc<AtomicBool>,
    accept: JoinHandle<()>,
}

impl CutProxy {
    /// A proxy on 127.0.0.1 (a port the OS chooses) to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let refusing = Arc::new(AtomicBool::new(false));
        let (l, r) = (links.clone(), refusing.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if r.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut links = l.lock().unwrap();
                links.retain(|h| !h.is_finished());
                links.push(link);
            }
        });
        Self {
            addr,
            links,
            refusing,
            accept,
        }
    }

    /// Drops every connection through the proxy now; both ends see their socket close.
    pub fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    /// While on, new connections are closed as soon as they are accepted.
    pub fn refuse(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }

    /// Connections open through the proxy now.
    pub fn open_links(&self) -> usize {
        let mut links = self.links.lock().unwrap();
        links.retain(|h| !h.is_finished());
        links.len()
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
