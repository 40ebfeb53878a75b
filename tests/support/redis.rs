//! A `redis-server` of the test's own on 127.0.0.1 and a free port: no fixed port, no
//! system service, no persistence. Killed on drop; [`RedisServer::restart`] brings it
//! back on the same port with no data (what a restart without persistence does).
//! A machine without `redis-server` fails the test (`.ci/run` installs it).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        // The port the OS gives a listener is free once the listener is gone.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = RedisServer { port, child: None };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): install it (`apt-get install -y redis-server`; .ci/run does)"
                )
            });
        self.child = Some(child);
        self.wait_ready();
    }

    /// Until the server answers PING on a connection (its readiness signal).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if ping(self.port) {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("redis-server exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "redis-server not ready in 20 s");
            std::thread::yield_now();
        }
    }

    /// Kills the server (all its data goes: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts a new one on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One PING over a fresh connection; connecting fails until the server listens.
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl RedisServer {
    /// The keys matching `pattern` (`KEYS`: fine on a test's own small server).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let client = redis::Client::open(self.url()).expect("a redis url");
        let mut conn = client.get_connection().expect("redis reachable");
        redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut conn)
            .expect("KEYS answers")
    }

    /// The number of fields of the hash at `key`.
    pub fn hlen(&self, key: &str) -> usize {
        let client = redis::Client::open(self.url()).expect("a redis url");
        let mut conn = client.get_connection().expect("redis reachable");
        redis::cmd("HLEN")
            .arg(key)
            .query(&mut conn)
            .expect("HLEN answers")
    }
}
