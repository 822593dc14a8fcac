//! The data channel: TPM 2.0 commands and responses as raw bytes (the 10-byte header
//! carries the size), optionally preceded by the TCG `TPM_SEND_COMMAND` prefix
//! (command 8, locality, size), in which case the response is framed as the
//! simulator frames it (size, response, a zero acknowledgement).

use std::io::{self, Read, Write};

/// `TPM_SEND_COMMAND` of the simulator protocol, also accepted on swtpm's data channel.
pub const TPM_SEND_COMMAND: u32 = 8;

/// One command read from a data channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A raw TPM command.
    Raw(Vec<u8>),
    /// A command with the TCG prefix, carrying its locality.
    Prefixed {
        /// The locality.
        locality: u8,
        /// The command.
        command: Vec<u8>,
    },
}

/// A data-channel read that cannot continue.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A command size outside 10..=max (the stream cannot be resynchronised).
    #[error("command size {0} is out of bounds")]
    Size(u32),
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

/// Reads the next command; `None` at a clean end of stream.
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Option<Frame>, FrameError> {
    let mut head = [0u8; 10];
    if !read_exact_or_eof(r, &mut head)? {
        return Ok(None);
    }
    let tag = u16::from_be_bytes([head[0], head[1]]);
    let word0 = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let (prefix, mut command) = if tag == 0x8001 || tag == 0x8002 || tag == 0x00c1 {
        (None, head.to_vec())
    } else if word0 == TPM_SEND_COMMAND {
        let size = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
        (Some((head[4], size)), vec![head[9]])
    } else {
        // Neither a TPM command nor the prefix: report the size field as received.
        return Err(FrameError::Size(u32::from_be_bytes([
            head[2], head[3], head[4], head[5],
        ])));
    };
    let size = match prefix {
        Some((_, size)) => size,
        None => u32::from_be_bytes([head[2], head[3], head[4], head[5]]),
    };
    if (size as usize) < 10 || size as usize > max {
        return Err(FrameError::Size(size));
    }
    let have = command.len();
    command.resize(size as usize, 0);
    if have < command.len() {
        r.read_exact(&mut command[have..])?;
    }
    Ok(Some(match prefix {
        Some((locality, _)) => Frame::Prefixed { locality, command },
        None => Frame::Raw(command),
    }))
}

/// Writes the response to `frame`.
pub fn write_response(w: &mut impl Write, frame: &Frame, response: &[u8]) -> io::Result<()> {
    match frame {
        Frame::Raw(_) => w.write_all(response)?,
        Frame::Prefixed { .. } => {
            let mut out = Vec::with_capacity(response.len() + 8);
            out.extend_from_slice(&(response.len() as u32).to_be_bytes());
            out.extend_from_slice(response);
            out.extend_from_slice(&0u32.to_be_bytes());
            w.write_all(&out)?;
        }
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_prefixed_and_bad_sizes() {
        let cmd = [0x80, 1, 0, 0, 0, 12, 0, 0, 1, 0x7b, 0, 8];
        let mut r = &cmd[..];
        assert_eq!(
            read_frame(&mut r, 4096).unwrap(),
            Some(Frame::Raw(cmd.to_vec()))
        );
        assert_eq!(read_frame(&mut r, 4096).unwrap(), None);
        let mut pre = vec![0, 0, 0, 8, 3, 0, 0, 0, 12];
        pre.extend_from_slice(&cmd);
        let f = read_frame(&mut &pre[..], 4096).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::Prefixed {
                locality: 3,
                command: cmd.to_vec()
            }
        );
        let mut out = Vec::new();
        write_response(&mut out, &f, &[1, 2]).unwrap();
        assert_eq!(out, [0, 0, 0, 2, 1, 2, 0, 0, 0, 0]);
        let big = [0x80, 1, 0, 1, 0, 0, 0, 0, 1, 0x7b];
        assert!(matches!(
            read_frame(&mut &big[..], 4096),
            Err(FrameError::Size(65536))
        ));
        let small = [0x80, 1, 0, 0, 0, 2, 0, 0, 1, 0x7b];
        assert!(matches!(
            read_frame(&mut &small[..], 4096),
            Err(FrameError::Size(2))
        ));
        let junk = [1u8; 10];
        assert!(read_frame(&mut &junk[..], 4096).is_err());
        // A truncated command is an I/O error, not a short command.
        assert!(matches!(
            read_frame(&mut &cmd[..11], 4096),
            Err(FrameError::Io(_))
        ));
    }
}
