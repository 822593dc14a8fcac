//! The data channel of swtpm's protocol: raw TPM 2.0 commands and responses (the
//! 10-byte header carries the size), exactly one command per message, as QEMU's
//! `-tpmdev emulator` sends them. The simulator's `TPM_SEND_COMMAND` prefix belongs to
//! the mssim command port ([`crate::mssim`]) and is refused here, and so is a message
//! carrying more bytes than its header's size: a VMM request is never split into
//! several commands, and the locality is only ever the one set over the control
//! channel (`CMD_SET_LOCALITY`).

use std::io::{self, Read, Write};
use std::time::Duration;

/// `TPM_SEND_COMMAND` of the simulator protocol (refused on this channel).
pub const TPM_SEND_COMMAND: u32 = 8;
/// `TPM_RC_BAD_TAG`: the answer to a message that is not a TPM command.
pub const TPM_RC_BAD_TAG: u32 = 0x1E;

/// A data-channel message that is not exactly one TPM command.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed, timed out, or ended inside a command.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A command size outside 10..=max: the rest of the stream cannot be trusted, so
    /// the connection ends after the answer.
    #[error("command size {0} is out of bounds")]
    Size(u32),
    /// More bytes than the header's size arrived in one message; the whole message is
    /// refused and the channel goes on with the next one.
    #[error("{got} bytes arrived for a command of {size}")]
    Trailing {
        /// The header's size.
        size: u32,
        /// The bytes received.
        got: usize,
    },
    /// The simulator's `TPM_SEND_COMMAND` prefix or another tag: refused, the whole
    /// message dropped.
    #[error("not a TPM command (tag {0:#06x})")]
    Tag(u16),
}

impl FrameError {
    /// The TPM response code answered for this error, if any (an I/O error gets none).
    pub fn response_code(&self) -> Option<u32> {
        match self {
            Self::Io(_) => None,
            Self::Size(_) | Self::Trailing { .. } => Some(crate::TPM_RC_COMMAND_SIZE),
            Self::Tag(_) => Some(TPM_RC_BAD_TAG),
        }
    }

    /// Whether the channel can go on after this error.
    pub fn recoverable(&self) -> bool {
        matches!(self, Self::Trailing { .. } | Self::Tag(_))
    }
}

/// A stream whose read timeout can be set (a socket).
pub trait Timed {
    /// Sets the read timeout (`None`: block).
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl Timed for std::os::unix::net::UnixStream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}

impl Timed for std::net::TcpStream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}

/// A byte slice as a stream (tests and fuzzing): timeouts are ignored.
impl Timed for &[u8] {
    fn set_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}

/// How long a data connection may wait for its next command (`None`: forever, as for
/// the VMM's own socket) and for the rest of a command once it has started.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Between commands.
    pub idle: Option<Duration>,
    /// Inside one command.
    pub within: Duration,
}

/// Reads one message into `buf` (whose length bounds it; at least `max + 1`) and
/// returns the command's length, `None` at a clean end of stream.
pub fn read_command(
    r: &mut (impl Read + Timed),
    buf: &mut [u8],
    max: usize,
    t: Timeouts,
) -> Result<Option<usize>, FrameError> {
    debug_assert!(buf.len() > max);
    r.set_timeout(t.idle)?;
    let mut got = loop {
        match r.read(buf) {
            Ok(0) => return Ok(None),
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    };
    r.set_timeout(Some(t.within))?;
    fill(r, buf, &mut got, 10)?;
    let tag = u16::from_be_bytes([buf[0], buf[1]]);
    if tag != 0x8001 && tag != 0x8002 {
        return Err(FrameError::Tag(tag));
    }
    let size = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]);
    if (size as usize) < 10 || size as usize > max {
        return Err(FrameError::Size(size));
    }
    fill(r, buf, &mut got, size as usize)?;
    if got != size as usize {
        return Err(FrameError::Trailing { size, got });
    }
    Ok(Some(got))
}

/// Reads into `buf` until it holds `until` bytes (`got` so far).
fn fill(r: &mut impl Read, buf: &mut [u8], got: &mut usize, until: usize) -> io::Result<()> {
    while *got < until {
        match r.read(&mut buf[*got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => *got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes a response.
pub fn write_response(w: &mut impl Write, response: &[u8]) -> io::Result<()> {
    w.write_all(response)?;
    w.flush()
}

/// Fills `buf`; `false` at a clean end of stream before the first byte.
pub(crate) fn read_exact_or_eof(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        idle: None,
        within: Duration::from_secs(1),
    };

    fn one(msg: &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
        let mut buf = vec![0u8; 4097];
        let mut r = msg;
        read_command(&mut r, &mut buf, 4096, T).map(|n| n.map(|n| buf[..n].to_vec()))
    }

    #[test]
    fn one_raw_command_per_message() {
        let cmd = [0x80, 1, 0, 0, 0, 12, 0, 0, 1, 0x7b, 0, 8];
        assert_eq!(one(&cmd).unwrap(), Some(cmd.to_vec()));
        assert!(one(&[]).unwrap().is_none());
        let mut out = Vec::new();
        write_response(&mut out, &[1, 2]).unwrap();
        assert_eq!(out, [1, 2]);
    }

    #[test]
    fn the_simulator_prefix_is_refused_on_the_data_channel() {
        let cmd = [0x80, 1, 0, 0, 0, 12, 0, 0, 1, 0x7b, 0, 8];
        let mut pre = vec![0, 0, 0, 8, 2, 0, 0, 0, 12];
        pre.extend_from_slice(&cmd);
        let e = one(&pre).unwrap_err();
        assert!(matches!(e, FrameError::Tag(0)), "{e:?}");
        assert_eq!(e.response_code(), Some(TPM_RC_BAD_TAG));
        assert!(e.recoverable());
    }

    #[test]
    fn trailing_bytes_refuse_the_whole_message() {
        // Two commands in one message are not run as two: the message is refused.
        let cmd = [0x80, 1, 0, 0, 0, 12, 0, 0, 1, 0x7b, 0, 8];
        let two = [cmd, cmd].concat();
        let e = one(&two).unwrap_err();
        assert!(
            matches!(e, FrameError::Trailing { size: 12, got: 24 }),
            "{e:?}"
        );
        assert_eq!(e.response_code(), Some(crate::TPM_RC_COMMAND_SIZE));
    }

    #[test]
    fn bad_sizes_and_truncation() {
        let big = [0x80, 1, 0, 1, 0, 0, 0, 0, 1, 0x7b];
        assert!(matches!(one(&big), Err(FrameError::Size(65536))));
        let small = [0x80, 1, 0, 0, 0, 2, 0, 0, 1, 0x7b];
        assert!(matches!(one(&small), Err(FrameError::Size(2))));
        assert!(matches!(one(&[1u8; 10]), Err(FrameError::Tag(0x0101))));
        // A truncated command is an I/O error, not a short command.
        let cmd = [0x80, 1, 0, 0, 0, 12, 0, 0, 1, 0x7b, 0, 8];
        assert!(matches!(one(&cmd[..11]), Err(FrameError::Io(_))));
        assert!(matches!(one(&cmd[..5]), Err(FrameError::Io(_))));
    }
}
