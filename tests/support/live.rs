//! A tap-heroku run the test holds while it runs: it reads stdout message by message, acts at a
//! chosen point (a signal, a terminated backend, a closed pipe) and then collects the rest, the
//! exit code and the peak RSS. Used by the fault, resume-race and XMIN tests; the tables the fault
//! tests interrupt are here too.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{TapOutput, write_json};

/// Rows of the tables interrupted mid-stream: enough that a sync is far from done when we act.
pub const BIG_ROWS: i64 = 100_000;
/// Most a fault test may wait for the tap to exit after the fault.
pub const EXIT_LIMIT: Duration = Duration::from_secs(30);
/// A hung child is killed after this long, so a bug fails the test instead of hanging it.
pub const WATCHDOG: Duration = Duration::from_secs(120);

/// A table `name (id int primary key, v int)` holding ids 1..=BIG_ROWS.
pub fn big_table_sql(name: &str) -> String {
    format!(
        "create table {name} (id int primary key, v int not null); insert into {name} select g, g * 7 from generate_series(1, {BIG_ROWS}) g; analyze {name}"
    )
}

/// The command line of a sync.
pub fn sync_args(config: &Path, catalog: &Value, state: Option<&Value>) -> Vec<String> {
    let mut args = vec!["--config".into(), config.display().to_string(), "--catalog".into(), write_json(catalog).display().to_string()];
    if let Some(state) = state {
        args.push("--state".into());
        args.push(write_json(state).display().to_string());
    }
    args
}

/// A running tap-heroku whose stdout the test reads line by line, so that it can act (terminate
/// the backend, send a signal, close the pipe) at a chosen point of the stream. While the test
/// does not read, the tap blocks on the full pipe. A watchdog kills it after [`WATCHDOG`].
pub struct Live {
    /// The process.
    child: Child,
    /// Its stdout, until read to the end or closed.
    out: Option<BufReader<ChildStdout>>,
    /// Every byte read from stdout so far.
    stdout: Vec<u8>,
    /// Collects stderr.
    stderr: Option<JoinHandle<String>>,
    /// Set once the process has been reaped (stops the watchdog and the RSS sampler).
    done: Arc<AtomicBool>,
    /// Highest VmHWM (kB) seen in /proc/<pid>/status.
    peak_rss_kb: Arc<AtomicU64>,
    /// Samples VmHWM while the process runs.
    sampler: Option<JoinHandle<()>>,
}

/// What a [`Live`] run printed, with its peak RSS.
pub struct Finished {
    /// stdout, stderr and exit code.
    pub out: TapOutput,
    /// Peak resident set size in kB (VmHWM, sampled every few ms).
    pub peak_rss_kb: u64,
    /// From the end of the test's action to the exit.
    pub exit_after: Duration,
}

impl Live {
    /// Starts the binary with `args` and extra environment (no `DATABASE_URL`, no `RUST_LOG`).
    pub fn spawn(args: &[String], env: &[(&str, &str)]) -> Live {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tap-heroku"));
        cmd.args(args).env_remove("DATABASE_URL").env_remove("RUST_LOG").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting tap-heroku");
        let pid = child.id();
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = err.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        });
        let done = Arc::new(AtomicBool::new(false));
        let watchdog_done = Arc::clone(&done);
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < WATCHDOG {
                if watchdog_done.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !watchdog_done.load(Ordering::SeqCst) {
                eprintln!("watchdog: tap-heroku (pid {pid}) still runs after {WATCHDOG:?}; killing it");
                let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
        });
        let peak_rss_kb = Arc::new(AtomicU64::new(0));
        let (sampler_done, peak) = (Arc::clone(&done), Arc::clone(&peak_rss_kb));
        let sampler = std::thread::spawn(move || {
            let path = format!("/proc/{pid}/status");
            while !sampler_done.load(Ordering::SeqCst) {
                if let Some(kb) = std::fs::read_to_string(&path).ok().as_deref().and_then(vm_hwm_kb) {
                    peak.fetch_max(kb, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let out = Some(BufReader::with_capacity(1 << 16, child.stdout.take().expect("piped stdout")));
        Live { child, out, stdout: Vec::new(), stderr: Some(stderr), done, peak_rss_kb, sampler: Some(sampler) }
    }

    /// Starts a sync with `config`, `catalog` and `state`.
    pub fn sync(config: &Path, catalog: &Value, state: Option<&Value>) -> Live {
        Live::spawn(&sync_args(config, catalog, state), &[])
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().expect("polling tap-heroku").is_some()
    }

    /// Reads the next stdout line as a message; `None` at the end of stdout (or after a
    /// partial last line, which [`Live::finish`]'s output then shows).
    pub fn next_message(&mut self) -> Option<Value> {
        let out = self.out.as_mut().expect("stdout is open");
        let mut line = Vec::new();
        let n = out.read_until(b'\n', &mut line).expect("reading the tap's stdout");
        self.stdout.extend_from_slice(&line);
        if n == 0 || line.last() != Some(&b'\n') {
            return None;
        }
        Some(serde_json::from_slice(&line).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {}", String::from_utf8_lossy(&line))))
    }

    /// Reads messages until `n` RECORDs were seen; panics when stdout ends first.
    pub fn read_records(&mut self, n: usize) {
        let mut seen = 0;
        while seen < n {
            let m = self.next_message().unwrap_or_else(|| panic!("stdout ended after {seen} records, before {n}"));
            if m["type"] == "RECORD" {
                seen += 1;
            }
        }
    }

    /// Reads messages until `n` RECORDs were seen; false when stdout ended first.
    pub fn try_read_records(&mut self, n: usize) -> bool {
        let mut seen = 0;
        while seen < n {
            match self.next_message() {
                Some(m) if m["type"] == "RECORD" => seen += 1,
                Some(_) => {}
                None => return false,
            }
        }
        true
    }

    /// Sends `signal` (`TERM`, ...) with kill(1) to a process that may have exited already.
    pub fn signal_if_running(&self, signal: &str) {
        let _ = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).stderr(Stdio::null()).status();
    }

    /// Sends `signal` (`TERM`, `INT`, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().expect("running kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Closes our end of stdout: the tap's next write fails with EPIPE.
    pub fn close_stdout(&mut self) {
        self.out = None;
    }

    /// Reads the rest of stdout and waits (at most `limit`) for the exit.
    pub fn finish(mut self, limit: Duration) -> Finished {
        let acted = Instant::now();
        if let Some(mut out) = self.out.take() {
            out.read_to_end(&mut self.stdout).expect("reading the tap's stdout");
        }
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for tap-heroku") {
                break status;
            }
            if acted.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.done.store(true, Ordering::SeqCst);
                panic!("tap-heroku did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let exit_after = acted.elapsed();
        self.done.store(true, Ordering::SeqCst);
        if let Some(s) = self.sampler.take() {
            let _ = s.join();
        }
        let stderr = self.stderr.take().expect("stderr collector").join().expect("stderr collector thread");
        Finished {
            out: TapOutput {
                stdout: String::from_utf8(std::mem::take(&mut self.stdout)).expect("stdout is UTF-8"),
                stderr,
                code: status.code().unwrap_or(-1),
            },
            peak_rss_kb: self.peak_rss_kb.load(Ordering::SeqCst),
            exit_after,
        }
    }
}

/// `VmHWM` (peak resident set, kB) from the text of /proc/<pid>/status.
pub fn vm_hwm_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()
}

/// A view whose rows each take `per_row` seconds: the tap is waiting for the server, not for
/// the pipe, when the fault hits.
pub fn slow_view_sql(name: &str, rows: i64, per_row: f64) -> String {
    format!(
        "create function {name}_slow(i int) returns int language plpgsql as $$ begin perform pg_sleep({per_row}); return i; end $$; \
         create view {name} as select {name}_slow(g) as id from generate_series(1, {rows}) g"
    )
}
