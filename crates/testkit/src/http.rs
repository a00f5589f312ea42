//! A scripted HTTP/1.1 server for readiness-gate tests: each request is answered as a
//! closure decides (a status, a redirect, or no answer at all), and every request is
//! recorded. Plain HTTP on a free port, inside a network namespace if one is given, one
//! thread per connection; stopped on drop (connections that were never answered are
//! closed then).

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use nix::sched::{CloneFlags, setns};

use crate::NetNs;

/// How to answer one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// This status, an empty body.
    Status(u16),
    /// `302 Found` to this location.
    Redirect(String),
    /// Read the request and never answer (until the server stops).
    Silence,
}

/// Decides the answer from the request's number (0 for the first) and its path.
pub type Script = dyn Fn(usize, &str) -> Answer + Send + Sync;

/// The server; see the module docs.
pub struct ScriptedHttp {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ScriptedHttp {
    /// Listens on `ip` (a free port), inside `netns` if given.
    pub fn start(
        netns: Option<&NetNs>,
        ip: IpAddr,
        script: impl Fn(usize, &str) -> Answer + Send + Sync + 'static,
    ) -> Result<Self> {
        let netns_fd = netns.map(NetNs::fd).transpose()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let script: Arc<Script> = Arc::new(script);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<SocketAddr>>();
        let (seen, stopping) = (Arc::clone(&requests), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("scripted-http".into())
            .spawn(move || {
                let bound = (|| -> Result<TcpListener> {
                    if let Some(fd) = netns_fd {
                        setns(&fd, CloneFlags::CLONE_NEWNET).context("setns into the netns")?;
                    }
                    let listener =
                        TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"))?;
                    listener.set_nonblocking(true)?;
                    Ok(listener)
                })();
                match bound.and_then(|l| Ok((l.local_addr()?, l))) {
                    Ok((addr, listener)) => {
                        let _ = ready_tx.send(Ok(addr));
                        accept_loop(&listener, &script, &seen, &stopping);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .context("spawning the HTTP server's thread")?;
        let addr = ready_rx
            .recv()
            .map_err(|_| anyhow!("the HTTP server's thread ended before listening"))??;
        Ok(Self {
            addr,
            requests,
            stop,
            thread: Some(thread),
        })
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The paths requested so far, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl Drop for ScriptedHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!("testkit: the scripted HTTP server's thread panicked");
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    script: &Arc<Script>,
    requests: &Arc<Mutex<Vec<String>>>,
    stop: &Arc<AtomicBool>,
) {
    let mut connections = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (script, requests, stop) =
                    (Arc::clone(script), Arc::clone(requests), Arc::clone(stop));
                connections.push(std::thread::spawn(move || {
                    serve(stream, script.as_ref(), &requests, &stop);
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => eprintln!("testkit: scripted HTTP: accept: {e}"),
        }
    }
    for c in connections {
        let _ = c.join();
    }
}

/// Answers the requests of one connection (keep-alive) until the peer closes it.
fn serve(stream: TcpStream, script: &Script, requests: &Mutex<Vec<String>>, stop: &AtomicBool) {
    // Short reads, so a stop is noticed while waiting for the next request.
    if stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .is_err()
    {
        return;
    }
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    while !stop.load(Ordering::Relaxed) {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => head.push_str(&line),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // Keep what was read of a partial line.
                head.push_str(&line);
                continue;
            }
            Err(_) => return,
        }
        if !head.ends_with("\r\n\r\n") {
            continue;
        }
        // A GET has no body: the head is the request.
        let path = head
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        head.clear();
        let index = {
            let mut seen = requests
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            seen.push(path.clone());
            seen.len() - 1
        };
        let response = match script(index, &path) {
            Answer::Status(code) => {
                format!("HTTP/1.1 {code} Scripted\r\nContent-Length: 0\r\n\r\n")
            }
            Answer::Redirect(to) => {
                format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n")
            }
            Answer::Silence => {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
        };
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}
