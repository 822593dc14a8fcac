//! The host agent's end of a guest agent's channel (`guest_agent::wire`): QEMU's
//! Unix socket of the guest's virtio-serial port, in the VM's directory.
//!
//! A thread per running guest reads the guest's lines. It relays the guest's three
//! calls ([`Relay`]: a nonce and an attestation of the VM's own provider, the host's
//! certificate chain), keeps the guest's last status report in the VM's directory
//! ([`REPORT`]) and hands the answers to the host's own calls ([`Channel::call`]:
//! a fresh token for `cvm vm attest`) to their callers. The guest is untrusted: its
//! lines are bounded, anything but those calls is answered with an error, and nothing
//! it sends reaches another address.

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

/// How many calls a guest may have relayed in [`RELAY_WINDOW`] (a boot with a few key
/// releases makes about twenty); more are answered with an error, not relayed, so
/// that one guest cannot flood the platform's services.
pub const RELAY_LIMIT: usize = 60;
/// The window of [`RELAY_LIMIT`].
pub const RELAY_WINDOW: Duration = Duration::from_secs(60);

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
    next_id: Mutex<u64>,
    report: PathBuf,
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
        let ch = Arc::new(Channel {
            writer: Mutex::new(stream.try_clone()?),
            waiters: Arc::default(),
            next_id: Mutex::new(0),
            report,
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
        let mut recent: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
        loop {
            let m = match wire::read_message(&mut reader) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                // A line too long, or not a message: the guest is answered no more.
                Err(e) => {
                    tracing::warn!(error = %e, "the guest agent's channel is closed");
                    break;
                }
            };
            match m {
                Message::Request { id, call } => {
                    let now = Instant::now();
                    while recent
                        .front()
                        .is_some_and(|t| now.duration_since(*t) > RELAY_WINDOW)
                    {
                        recent.pop_front();
                    }
                    let answer = match call {
                        Call::Token { .. } => Err("the host answers no token call".to_string()),
                        _ if recent.len() >= RELAY_LIMIT => Err(format!(
                            "more than {RELAY_LIMIT} calls in {} s: try again later",
                            RELAY_WINDOW.as_secs()
                        )),
                        call => {
                            recent.push_back(now);
                            relay(call)
                        }
                    };
                    let (ok, error) = match answer {
                        Ok(v) => (Some(v), None),
                        Err(e) => (None, Some(e)),
                    };
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
                Message::Report { report } => {
                    tracing::info!(stage = %report.stage, root = ?report.root, "guest agent report");
                    if let Ok(text) = serde_json::to_vec_pretty(&report) {
                        let _ = seal::write_secret_file(&self.report, &text);
                    }
                }
            }
        }
        // The waiters learn that no answer comes.
        let mut waiters = lock(&self.waiters);
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        waiters.clear();
    }

    /// Asks the guest `call` and waits up to `timeout` for its answer.
    pub fn call(&self, call: Call, timeout: Duration) -> Result<Value, CallError> {
        let gone =
            || CallError::Unanswered("the guest agent's channel closed (the guest is gone)".into());
        let id = {
            let mut n = lock(&self.next_id);
            *n += 1;
            *n
        };
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

    /// The guest agent's last status report, if it sent one.
    pub fn last_report(&self) -> Option<wire::Report> {
        serde_json::from_slice(&std::fs::read(&self.report).ok()?).ok()
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

    #[test]
    fn the_guests_calls_are_relayed_within_a_limit_and_its_reports_kept() {
        let relay: Relay = Box::new(|call| match call {
            Call::Nonce => Ok(serde_json::json!({"nonce": "n"})),
            other => Err(format!("no {}", serde_json::to_string(&other).unwrap())),
        });
        let (dir, ch, mut r, mut w) = pair(relay);
        // The guest's calls, answered in order; past the limit, refused unrelayed.
        for id in 1..=(RELAY_LIMIT as u64 + 1) {
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
                        assert!(error.unwrap().contains("calls in"), "call {id}");
                    }
                }
                m => panic!("{m:?}"),
            }
        }
        // A guest cannot ask the host for a token.
        wire::write_message(
            &mut w,
            &Message::Request {
                id: 99,
                call: Call::Token { user_data: None },
            },
        )
        .unwrap();
        assert!(matches!(
            wire::read_message(&mut r).unwrap().unwrap(),
            Message::Response {
                id: 99,
                error: Some(_),
                ..
            }
        ));
        // A report is kept in the VM's directory.
        let report = wire::Report {
            agent: "cvm-guest".into(),
            stage: "attested".into(),
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
        assert_eq!(ch.last_report(), Some(report));
        assert!(dir.path().join(REPORT).exists());

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
            // Then a line longer than the limit: the host closes the channel.
            w.write_all(&vec![b'x'; wire::MAX_LINE + 2]).unwrap();
            w.write_all(b"\n").unwrap();
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
