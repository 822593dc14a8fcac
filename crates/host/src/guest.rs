//! The host agent's end of a guest agent's channel (`guest_agent::wire`): QEMU's
//! Unix socket of the guest's virtio-serial port, in the VM's directory.
//!
//! A thread per running guest reads the guest's lines. It relays the guest's four
//! calls ([`Relay`]: a nonce and an attestation of the VM's own provider, the host's
//! certificate chain, a key release from the platform's vault), keeps the guest's
//! last status report in the VM's directory ([`REPORT`], its fields bounded) and
//! hands the answers to the host's own calls ([`Channel::call`]: a fresh token for
//! `cvm vm attest`) to their callers. The guest is untrusted: its lines are bounded,
//! its messages counted against [`RELAY_LIMIT`], anything but those calls is
//! answered with an error, nothing it sends reaches another address, and a line that
//! is too long or not a message, or an answer it does not read, ends the channel.

use std::collections::HashMap;
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guest_agent::wire::{self, Call, Message};
use serde_json::Value;

/// The channel's socket, in the VM's directory.
pub const SOCKET: &str = "guest.sock";
/// The guest agent's last status report, in the VM's directory (JSON).
pub const REPORT: &str = "guest-agent.json";

/// How many messages (calls and reports) a guest may send in [`RELAY_WINDOW`] (a
/// boot makes five, and four more per key it releases; a `cvm vm attest` three); more
/// calls are answered with an error, not relayed, and more reports are dropped, so
/// that one guest cannot flood the platform's services or the host's disk.
pub const RELAY_LIMIT: usize = 120;
/// The window of [`RELAY_LIMIT`].
pub const RELAY_WINDOW: Duration = Duration::from_secs(60);

/// How long one write to the guest may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest text field of a report kept (a guest's words, bounded).
const REPORT_FIELD_MAX: usize = 4096;
/// The most key entries of a report kept.
const REPORT_KEYS_MAX: usize = 64;

fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

/// A guest's report with its fields bounded (what is kept and logged).
fn bounded(mut r: wire::Report) -> wire::Report {
    cut(&mut r.agent, 64);
    cut(&mut r.stage, 32);
    for f in [&mut r.kernel, &mut r.error, &mut r.token]
        .into_iter()
        .flatten()
    {
        cut(f, REPORT_FIELD_MAX);
    }
    if let Some(root) = r.root.as_mut() {
        cut(&mut root.device, 32);
        for f in [&mut root.dm_name, &mut root.dm_uuid].into_iter().flatten() {
            cut(f, 128);
        }
    }
    r.keys.truncate(REPORT_KEYS_MAX);
    for k in &mut r.keys {
        cut(&mut k.name, 128);
        for f in [&mut k.version, &mut k.error].into_iter().flatten() {
            cut(f, 512);
        }
    }
    r
}

/// What the host does for a guest's call: the answer, or why not.
pub type Relay = Box<dyn Fn(Call) -> Result<Value, String> + Send>;

type Waiters = Arc<Mutex<HashMap<u64, Sender<Result<Value, String>>>>>;

/// Why a call of the guest got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The guest answered with an error.
    #[error("{0}")]
    Refused(String),
    /// No answer came (no agent, a gone guest, a closed channel, the time ran out).
    #[error("{0}")]
    Unanswered(String),
}

/// One guest's channel.
pub struct Channel {
    writer: Mutex<UnixStream>,
    waiters: Waiters,
    next_id: std::sync::atomic::AtomicU64,
    report: PathBuf,
    /// The guest agent reported an attestation (and no restart since).
    reported: std::sync::atomic::AtomicBool,
    /// The reading thread ended: no answer comes any more.
    closed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Channel {
    /// Connects to QEMU's socket in `dir` (waiting up to `wait` for QEMU to make it)
    /// and serves the guest's calls with `relay` on a thread of its own, which ends
    /// when QEMU does.
    pub fn open(dir: &Path, wait: Duration, relay: Relay) -> std::io::Result<Arc<Channel>> {
        let path = dir.join(SOCKET);
        let deadline = Instant::now() + wait;
        let stream = loop {
            match UnixStream::connect(&path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let report = dir.join(REPORT);
        let _ = std::fs::remove_file(&report);
        // A write that does not finish in this time (a guest that does not read)
        // ends the channel rather than holding its writer.
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let ch = Arc::new(Channel {
            writer: Mutex::new(stream.try_clone()?),
            waiters: Arc::default(),
            next_id: std::sync::atomic::AtomicU64::new(1),
            report,
            reported: std::sync::atomic::AtomicBool::new(false),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        let reader = ch.clone();
        std::thread::spawn(move || reader.serve(BufReader::new(stream), &relay));
        Ok(ch)
    }

    fn send(&self, m: &Message) -> Result<(), String> {
        wire::write_message(&mut *lock(&self.writer), m).map_err(|e| e.to_string())
    }

    fn serve(&self, mut reader: BufReader<UnixStream>, relay: &Relay) {
        // Every line the guest sends but an answer to the host's own call counts
        // against one budget, refused ones too, so that a guest can neither flood
        // the platform's services nor the host's disk and log.
        let mut recent: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
        loop {
            let m = match wire::read_message(&mut reader) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                // A line too long, or not a message: the channel is closed.
                Err(e) => {
                    tracing::warn!(error = %e, "the guest agent's channel is closed");
                    break;
                }
            };
            let now = Instant::now();
            while recent
                .front()
                .is_some_and(|t| now.duration_since(*t) > RELAY_WINDOW)
            {
                recent.pop_front();
            }
            let over = recent.len() >= RELAY_LIMIT;
            if !matches!(m, Message::Response { .. }) {
                recent.push_back(now);
            }
            match m {
                Message::Request { id, call } => {
                    let answer = match call {
                        Call::Token { .. } => Err("the host answers no token call".to_string()),
                        _ if over => Err(format!(
                            "more than {RELAY_LIMIT} messages in {} s: try again later",
                            RELAY_WINDOW.as_secs()
                        )),
                        call => relay(call),
                    };
                    let (ok, error) = match answer {
                        Ok(v) => (Some(v), None),
                        Err(e) => (None, Some(e)),
                    };
                    // A guest that does not read its answers (the write times out)
                    // loses its channel.
                    if self.send(&Message::Response { id, ok, error }).is_err() {
                        break;
                    }
                }
                Message::Response { id, ok, error } => {
                    if let Some(tx) = lock(&self.waiters).remove(&id) {
                        let _ = tx.send(match (ok, error) {
                            (Some(v), None) => Ok(v),
                            (_, Some(e)) => Err(e),
                            (None, None) => Err("an empty answer".into()),
                        });
                    }
                }
                Message::Report { .. } if over => {}
                Message::Report { report } => {
                    let report = bounded(report);
                    self.reported.store(
                        report.stage != "started",
                        std::sync::atomic::Ordering::SeqCst,
                    );
                    tracing::info!(stage = %report.stage, root = ?report.root, "guest agent report");
                    if let Ok(text) = serde_json::to_vec_pretty(&report) {
                        let _ = seal::write_secret_file(&self.report, &text);
                    }
                }
            }
        }
        // The guest sees the channel end (its calls fail instead of waiting), and the
        // waiters learn that no answer comes.
        let _ = lock(&self.writer).shutdown(std::net::Shutdown::Both);
        let mut waiters = lock(&self.waiters);
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        waiters.clear();
    }

    /// Whether the guest agent has attested since the guest last (re)started: then
    /// it answers calls.
    pub fn reported(&self) -> bool {
        self.reported.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Asks the guest `call` and waits up to `timeout` for its answer.
    pub fn call(&self, call: Call, timeout: Duration) -> Result<Value, CallError> {
        let gone =
            || CallError::Unanswered("the guest agent's channel closed (the guest is gone)".into());
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (tx, rx) = channel();
        {
            let mut waiters = lock(&self.waiters);
            if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(gone());
            }
            waiters.insert(id, tx);
        }
        if let Err(e) = self.send(&Message::Request { id, call }) {
            lock(&self.waiters).remove(&id);
            return Err(CallError::Unanswered(format!(
                "the guest agent's channel: {e}"
            )));
        }
        let answer = rx.recv_timeout(timeout);
        lock(&self.waiters).remove(&id);
        match answer {
            Ok(a) => a.map_err(CallError::Refused),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(CallError::Unanswered(format!(
                "the guest agent did not answer within {} s (is the guest up and its agent running? `cvm vm console` shows)",
                timeout.as_secs()
            ))),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(gone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::unix::net::UnixListener;

    /// A guest on the other end of QEMU's socket: the test plays both QEMU (it
    /// listens) and the guest agent.
    fn pair(
        relay: Relay,
    ) -> (
        tempfile::TempDir,
        Arc<Channel>,
        BufReader<UnixStream>,
        UnixStream,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join(SOCKET)).unwrap();
        let path = dir.path().to_path_buf();
        let opener =
            std::thread::spawn(move || Channel::open(&path, Duration::from_secs(5), relay));
        let (guest, _) = listener.accept().unwrap();
        let ch = opener.join().unwrap().unwrap();
        (dir, ch, BufReader::new(guest.try_clone().unwrap()), guest)
    }

    impl Channel {
        /// The guest agent's last status report as kept in the VM's directory.
        fn last_report(&self) -> Option<wire::Report> {
            serde_json::from_slice(&std::fs::read(&self.report).ok()?).ok()
        }
    }

    #[test]
    fn the_guests_calls_are_relayed_within_a_limit_and_its_reports_kept() {
        let relay: Relay = Box::new(|call| match call {
            Call::Nonce => Ok(serde_json::json!({"nonce": "n"})),
            other => Err(format!("no {}", serde_json::to_string(&other).unwrap())),
        });
        let (dir, ch, mut r, mut w) = pair(relay);
        // A report is kept in the VM's directory, its fields bounded; an attested
        // guest answers calls.
        assert!(!ch.reported());
        let report = wire::Report {
            agent: "cvm-guest".into(),
            stage: "attested".into(),
            kernel: Some("k".repeat(100_000)),
            ..wire::Report::default()
        };
        wire::write_message(
            &mut w,
            &Message::Report {
                report: report.clone(),
            },
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while ch.last_report().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let kept = ch.last_report().unwrap();
        assert_eq!(kept.stage, "attested");
        assert_eq!(kept.kernel.unwrap().len(), REPORT_FIELD_MAX);
        assert!(ch.reported());
        assert!(dir.path().join(REPORT).exists());
        // The guest's calls, answered in order; past the limit (the report counted),
        // refused unrelayed.
        for id in 2..=(RELAY_LIMIT as u64 + 1) {
            wire::write_message(
                &mut w,
                &Message::Request {
                    id,
                    call: Call::Nonce,
                },
            )
            .unwrap();
            match wire::read_message(&mut r).unwrap().unwrap() {
                Message::Response { id: got, ok, error } => {
                    assert_eq!(got, id);
                    if id <= RELAY_LIMIT as u64 {
                        assert_eq!(ok.unwrap()["nonce"], "n");
                    } else {
                        assert!(error.unwrap().contains("messages in"), "call {id}");
                    }
                }
                m => panic!("{m:?}"),
            }
        }
        // A guest cannot ask the host for a token.
        wire::write_message(
            &mut w,
            &Message::Request {
                id: 999,
                call: Call::Token { user_data: None },
            },
        )
        .unwrap();
        assert!(matches!(
            wire::read_message(&mut r).unwrap().unwrap(),
            Message::Response {
                id: 999,
                error: Some(_),
                ..
            }
        ));

        // The host's call: answered by the guest.
        let guest = std::thread::spawn(move || {
            let Message::Request {
                id,
                call: Call::Token { user_data },
            } = wire::read_message(&mut r).unwrap().unwrap()
            else {
                panic!("not a token call")
            };
            assert_eq!(user_data.as_deref(), Some("0a"));
            wire::write_message(
                &mut w,
                &Message::Response {
                    id,
                    ok: Some(serde_json::json!({"token": "t"})),
                    error: None,
                },
            )
            .unwrap();
            // Then a line longer than the limit: the host closes the channel, and
            // the guest sees it end.
            w.write_all(&vec![b'x'; wire::MAX_LINE + 2]).unwrap();
            w.write_all(b"\n").unwrap();
            assert!(wire::read_message(&mut r).unwrap().is_none());
        });
        let v = ch
            .call(
                Call::Token {
                    user_data: Some("0a".into()),
                },
                Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(v["token"], "t");
        guest.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match ch.call(Call::Token { user_data: None }, Duration::from_millis(200)) {
                Err(CallError::Unanswered(why)) if why.contains("closed") => break,
                other => assert!(Instant::now() < deadline, "{other:?}"),
            }
        }
    }
}
