//! The channel between a guest agent and its host agent: one JSON object per line,
//! both ways, over a virtio-serial port (the guest's
//! `/dev/virtio-ports/org.opencvm.guest.0`, a Unix socket of QEMU's on the host).
//!
//! Either side may call the other ([`Message::Request`], answered by a
//! [`Message::Response`] with the same id); the guest also sends its status
//! ([`Message::Report`]). The guest calls only what the host relays for it
//! ([`Call::Nonce`], [`Call::Certs`], [`Call::Attest`], [`Call::Release`]); the host
//! calls only
//! [`Call::Token`]. Each side bounds what it reads ([`MAX_LINE`]) and treats the
//! other as untrusted: the host relays no other call, to no other service.

use std::io::{BufRead, Write};

use attest_api::AzureGuestRequest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The largest line either side reads (an event log of a few hundred KiB, base64,
/// inside an attestation request).
pub const MAX_LINE: usize = 4 << 20;

/// The guest's name of its virtio-serial port.
pub const PORT_NAME: &str = "org.opencvm.guest.0";

/// One line of the channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// A call to the other side.
    Request {
        /// Answered by the response with this id.
        id: u64,
        /// What is asked.
        call: Call,
    },
    /// The answer to a request: `ok` (its value) or `error` (why not).
    Response {
        /// The request's id.
        id: u64,
        /// The answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ok: Option<Value>,
        /// Why there is none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The guest's status (guest to host).
    Report {
        /// The status.
        report: Report,
    },
}

/// What one side asks of the other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Call {
    /// Guest to host: a nonce of the VM's attestation provider (`{"nonce": ...}`).
    Nonce,
    /// Guest to host: the certificate chain of the host's secure processor for the
    /// guest's reports, PEM (`{"chain": ...}`); public, and checked against the
    /// attestation service's own roots.
    Certs,
    /// Guest to host: an attestation of the guest's own evidence, relayed to the VM's
    /// attestation provider (`{"token": ...}`).
    Attest {
        /// The evidence, as MAA's `AzureGuest` takes it.
        request: AzureGuestRequest,
    },
    /// Guest to host: a secure key release from the platform's key vault, relayed
    /// (`{"value": JWS, "version": ...}`: the vault's signed answer, the key in it
    /// wrapped to a key the guest's vTPM holds, and the version released). Never one
    /// of the VM's own platform keys (`vm-*`).
    Release {
        /// The key's name.
        key: String,
        /// Its version; the newest when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        /// The release request (the token, a nonce, the wrapping mechanism).
        request: keyvault_api::ReleaseRequest,
    },
    /// Host to guest: a fresh token of the guest's own evidence, with `user_data` (at
    /// most 64 bytes, hex) in the report's runtime claims (`{"token": ...}`).
    Token {
        /// What the caller wants bound into the report.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_data: Option<String>,
    },
}

/// What the guest agent says of its VM. Said by the guest: diagnosis, not evidence
/// (the token is the evidence).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The agent and its version.
    pub agent: String,
    /// `started`, `attested` or `attestation_failed`.
    pub stage: String,
    /// The guest kernel's release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The firmware's `SecureBoot` variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    /// The device the root file system is mounted from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<RootDevice>,
    /// The token of the guest's own evidence (`attested`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Why the attestation failed (`attestation_failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The keys the guest asked the key vault for at boot, and what came of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyReport>,
}

/// One key release the guest asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyReport {
    /// The key's name.
    pub name: String,
    /// The version released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Why it was not released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The device under the guest's root file system.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootDevice {
    /// `MAJOR:MINOR`.
    pub device: String,
    /// Its device-mapper name, when it is one (`root`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm_name: Option<String>,
    /// Its device-mapper uuid (`CRYPT-LUKS2-<uuid>-root` for a LUKS2 volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm_uuid: Option<String>,
    /// Whether it is an open LUKS2 volume.
    pub luks2: bool,
}

/// Why a line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The channel.
    #[error("the channel: {0}")]
    Io(#[from] std::io::Error),
    /// A line longer than [`MAX_LINE`].
    #[error("a line longer than {MAX_LINE} bytes")]
    TooLong,
    /// A line that is not a message.
    #[error("not a message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads the next line of `r` (at most [`MAX_LINE`] bytes); `None` at the end.
pub fn read_line(r: &mut impl BufRead) -> Result<Option<Vec<u8>>, WireError> {
    let mut line = Vec::new();
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if buf.is_empty() {
            if line.len() > MAX_LINE {
                return Err(WireError::TooLong);
            }
            return Ok((!line.is_empty()).then_some(line));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > MAX_LINE + 1 {
            return Err(WireError::TooLong);
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            line.pop();
            return Ok(Some(line));
        }
    }
}

/// Reads the next message of `r`, skipping empty lines; `None` at the end.
pub fn read_message(r: &mut impl BufRead) -> Result<Option<Message>, WireError> {
    loop {
        match read_line(r)? {
            None => return Ok(None),
            Some(l) if l.iter().all(u8::is_ascii_whitespace) => continue,
            Some(l) => return Ok(Some(serde_json::from_slice(&l)?)),
        }
    }
}

/// Writes `m` as one line.
pub fn write_message(w: &mut impl Write, m: &Message) -> Result<(), WireError> {
    let mut line = serde_json::to_vec(m)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()?;
    Ok(())
}

/// Reads every message of `data` until the end or the first error (fuzzing: no input
/// may panic or read past [`MAX_LINE`]).
pub fn fuzz_read(data: &[u8]) {
    let mut r = std::io::Cursor::new(data);
    while let Ok(Some(m)) = read_message(&mut r) {
        let _ = serde_json::to_vec(&m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_go_round_as_lines() {
        let ms = [
            Message::Request {
                id: 1,
                call: Call::Token {
                    user_data: Some("00ff".into()),
                },
            },
            Message::Request {
                id: 2,
                call: Call::Nonce,
            },
            Message::Response {
                id: 2,
                ok: Some(serde_json::json!({"nonce": "n"})),
                error: None,
            },
            Message::Report {
                report: Report {
                    agent: "cvm-guest".into(),
                    stage: "started".into(),
                    root: Some(RootDevice {
                        device: "254:0".into(),
                        luks2: true,
                        ..RootDevice::default()
                    }),
                    ..Report::default()
                },
            },
        ];
        let mut buf = Vec::new();
        for m in &ms {
            write_message(&mut buf, m).unwrap();
        }
        buf.extend_from_slice(b"\n\n");
        let mut r = std::io::Cursor::new(buf);
        for m in &ms {
            assert_eq!(read_message(&mut r).unwrap().as_ref(), Some(m));
        }
        assert!(read_message(&mut r).unwrap().is_none());
        // The wire names.
        let line = serde_json::to_string(&ms[1]).unwrap();
        assert_eq!(line, r#"{"type":"request","id":2,"call":{"op":"nonce"}}"#);
    }

    #[test]
    fn the_seed_lines_are_messages() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/guest-agent");
        for f in ["guest-to-host.jsonl", "host-to-guest.jsonl"] {
            let text = std::fs::read(dir.join(f)).unwrap();
            let mut r = std::io::Cursor::new(&text);
            let mut n = 0;
            while let Some(m) = read_message(&mut r).unwrap() {
                // Each goes round unchanged.
                let again: Message =
                    serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
                assert_eq!(again, m);
                n += 1;
            }
            assert_eq!(n, text.iter().filter(|&&b| b == b'\n').count(), "{f}");
        }
    }

    #[test]
    fn long_lines_and_garbage_are_refused() {
        let mut long = vec![b'a'; MAX_LINE + 2];
        long.push(b'\n');
        let mut r = std::io::BufReader::with_capacity(1024, std::io::Cursor::new(long));
        assert!(matches!(read_line(&mut r), Err(WireError::TooLong)));
        // A line of exactly MAX_LINE bytes is read.
        let mut exact = vec![b'a'; MAX_LINE];
        exact.push(b'\n');
        let mut r = std::io::Cursor::new(exact);
        assert_eq!(read_line(&mut r).unwrap().unwrap().len(), MAX_LINE);
        for bad in [
            &b"{\"type\":\"request\",\"id\":1,\"call\":{\"op\":\"shell\"}}\n"[..],
            b"{\"type\":\"nope\"}\n",
            b"not json\n",
            b"{\"type\":\"request\",\"id\":-1,\"call\":{\"op\":\"nonce\"}}\n",
        ] {
            let mut r = std::io::Cursor::new(bad);
            assert!(
                matches!(read_message(&mut r), Err(WireError::Json(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // The last line needs no newline.
        let mut r = std::io::Cursor::new(
            &b"{\"type\":\"request\",\"id\":1,\"call\":{\"op\":\"certs\"}}"[..],
        );
        assert!(matches!(
            read_message(&mut r).unwrap(),
            Some(Message::Request {
                id: 1,
                call: Call::Certs
            })
        ));
    }
}
