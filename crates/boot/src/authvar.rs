//! Time-based authenticated variable updates (`EFI_VARIABLE_AUTHENTICATION_2`), as
//! `SetVariable` receives them for PK, KEK, db and dbx, and as Microsoft publishes dbx
//! updates.

use tcg_eventlog::Guid;

use crate::Error;
use crate::cert::Cert;
use crate::esl::{CERT_TYPE_PKCS7, SignatureDb};
use crate::pkcs7::SignedData;
use crate::verify::build_chain;

/// `WIN_CERT_TYPE_EFI_GUID`.
const WIN_CERT_TYPE_EFI_GUID: u16 = 0x0EF1;
/// `EFI_VARIABLE_APPEND_WRITE`.
pub const APPEND_WRITE: u32 = 0x40;
/// The attributes of PK, KEK, db and dbx: NV | BS | RT | time-based authenticated.
pub const SECURE_BOOT_ATTRIBUTES: u32 = 0x27;

/// An `EFI_TIME` as authenticated variables use it (GMT, no nanoseconds): the fields
/// compare in order, so the derived ordering is chronological.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct EfiTime {
    /// Year (1900–9999).
    pub year: u16,
    /// Month (1–12).
    pub month: u8,
    /// Day (1–31).
    pub day: u8,
    /// Hour.
    pub hour: u8,
    /// Minute.
    pub minute: u8,
    /// Second.
    pub second: u8,
}

impl EfiTime {
    /// Reads the 16-byte structure; the fields that must be zero for authenticated
    /// variables (Pad1, Nanosecond, TimeZone, Daylight, Pad2) are checked.
    pub fn parse(b: &[u8; 16]) -> Result<Self, Error> {
        if b[7] != 0 || b[8..16].iter().any(|&x| x != 0) {
            return Err(Error::AuthVariable(
                "the timestamp's Pad1, Nanosecond, TimeZone, Daylight and Pad2 must be zero".into(),
            ));
        }
        Ok(Self {
            year: u16::from_le_bytes([b[0], b[1]]),
            month: b[2],
            day: b[3],
            hour: b[4],
            minute: b[5],
            second: b[6],
        })
    }

    /// Now, in UTC (GMT, as authenticated variables keep time).
    pub fn now() -> Self {
        let t = time::OffsetDateTime::now_utc();
        Self {
            year: u16::try_from(t.year()).unwrap_or(2026),
            month: u8::from(t.month()),
            day: t.day(),
            hour: t.hour(),
            minute: t.minute(),
            second: t.second(),
        }
    }

    /// The 16-byte structure.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..2].copy_from_slice(&self.year.to_le_bytes());
        b[2] = self.month;
        b[3] = self.day;
        b[4] = self.hour;
        b[5] = self.minute;
        b[6] = self.second;
        b
    }
}

impl std::fmt::Display for EfiTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// A parsed `EFI_VARIABLE_AUTHENTICATION_2` followed by the new value.
#[derive(Debug, Clone)]
pub struct AuthenticatedUpdate<'a> {
    /// The update's timestamp.
    pub time: EfiTime,
    time_bytes: [u8; 16],
    /// The PKCS#7 SignedData (with or without its ContentInfo).
    pub pkcs7: &'a [u8],
    /// The new value (for PK/KEK/db/dbx, signature lists).
    pub payload: &'a [u8],
}

impl<'a> AuthenticatedUpdate<'a> {
    /// Splits an update into header, signature and payload.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        let bad = |why: &str| Error::AuthVariable(why.into());
        let head = bytes
            .get(..40)
            .ok_or_else(|| bad("shorter than EFI_VARIABLE_AUTHENTICATION_2"))?;
        let mut time_bytes = [0u8; 16];
        time_bytes.copy_from_slice(&head[..16]);
        let len = u32::from_le_bytes([head[16], head[17], head[18], head[19]]) as usize;
        let revision = u16::from_le_bytes([head[20], head[21]]);
        let kind = u16::from_le_bytes([head[22], head[23]]);
        if revision != 0x0200 || kind != WIN_CERT_TYPE_EFI_GUID {
            return Err(bad(
                "not a WIN_CERTIFICATE_UEFI_GUID (revision 0x0200, type 0x0EF1)",
            ));
        }
        if head[24..40] != CERT_TYPE_PKCS7.0 {
            return Err(bad("CertType is not EFI_CERT_TYPE_PKCS7_GUID"));
        }
        let end = 16usize
            .checked_add(len)
            .filter(|&e| len >= 24 && e <= bytes.len())
            .ok_or_else(|| bad("dwLength runs past the data"))?;
        let time = EfiTime::parse(&time_bytes)?;
        Ok(Self {
            time,
            time_bytes,
            pkcs7: &bytes[40..end],
            payload: &bytes[end..],
        })
    }

    /// The bytes the signature covers: name (UTF-16LE, no NUL), vendor GUID,
    /// attributes, timestamp, payload.
    pub fn signed_message(&self, name: &str, vendor: Guid, attributes: u32) -> Vec<u8> {
        let mut m: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
        m.extend_from_slice(&vendor.0);
        m.extend_from_slice(&attributes.to_le_bytes());
        m.extend_from_slice(&self.time_bytes);
        m.extend_from_slice(self.payload);
        m
    }

    /// Verifies the update of variable `name` in `vendor` with `attributes` against
    /// `authorities` (PK for PK and KEK; PK or KEK for db and dbx): some signer must
    /// verify and chain to one of their certificates. Returns the subject of the
    /// certificate it chained to. Without `APPEND_WRITE`, the timestamp must be later
    /// than `previous` (when the variable exists).
    pub fn verify(
        &self,
        name: &str,
        vendor: Guid,
        attributes: u32,
        authorities: &SignatureDb,
        previous: Option<EfiTime>,
    ) -> Result<String, Error> {
        if attributes & APPEND_WRITE == 0
            && let Some(prev) = previous
            && self.time <= prev
        {
            return Err(Error::AuthVariable(format!(
                "timestamp {} is not later than the variable's {prev}",
                self.time
            )));
        }
        let sd = SignedData::parse(self.pkcs7)?;
        let message = self.signed_message(name, vendor, attributes);
        let anchors: Vec<Cert<'_>> = authorities.certificates().map(|(_, c)| c).collect();
        let mut last = Error::AuthVariable("no signer".into());
        for signer in &sd.signers {
            match sd.verify_signer(signer, &message) {
                Ok(cert) => match build_chain(cert, &sd.certificates, &anchors) {
                    Some((_, anchor)) => return Ok(anchors[anchor].subject_name()),
                    None => {
                        last = Error::AuthVariable(format!(
                            "signer {:?} does not chain to any of the {} authority certificates",
                            cert.subject_name(),
                            anchors.len()
                        ))
                    }
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}
