//! `tests/link.py` from the tests: a user-space TCP proxy between the tap and a test server that
//! delays each direction and can reset connections, or let them go silent, after a number of
//! bytes (see its docstring).
//! The proxy exits when its stdin closes, so it ends with the test process however that ends.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A running `tests/link.py` in front of a server; stopped on drop.
pub struct Link {
    /// Port on 127.0.0.1 to connect to instead of the server's.
    pub port: u16,
    child: Child,
    /// Held open: the proxy exits when it closes.
    stdin: Option<ChildStdin>,
    /// What the proxy logged on stderr so far (one "link: ..." line per event).
    log: Arc<Mutex<String>>,
    log_reader: Option<JoinHandle<()>>,
}

impl Link {
    /// Starts `tests/link.py --target 127.0.0.1:<target_port>` with `args` (e.g.
    /// `["--delay-ms", "20"]`, `["--reset-every-bytes", "50000000"]`) and waits for its port.
    pub fn start(target_port: u16, args: &[&str]) -> Link {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/link.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--target")
            .arg(format!("127.0.0.1:{target_port}"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting python3 {script}: {e} (the link needs python3)"));
        let stdin = child.stdin.take();
        let mut first_line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut first_line).expect("reading the link's port");
        let port = first_line.trim().parse().unwrap_or_else(|_| panic!("tests/link.py printed {first_line:?} instead of its port"));
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        let log_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("link log lock").push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Link { port, child, stdin, log, log_reader: Some(log_reader) }
    }

    /// What the proxy has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("link log lock").clone()
    }

    /// How many connections the proxy has reset so far.
    pub fn resets(&self) -> usize {
        self.log().lines().filter(|l| l.starts_with("link: reset connection")).count()
    }

    /// How many connections the proxy has let go silent so far (`--stall-after-bytes`).
    pub fn stalls(&self) -> usize {
        self.log().lines().filter(|l| l.starts_with("link: stalled connection")).count()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
    }
}
