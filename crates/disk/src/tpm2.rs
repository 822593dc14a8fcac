//! Binding a volume to a VM's vTPM the way systemd does (`systemd-tpm2` token, as
//! systemd-cryptenroll 252 writes it), so that systemd-cryptsetup in the guest
//! unlocks it with `tpm2-device=auto`, and our own unlock path does the same through
//! the vTPM the host holds.
//!
//! A random 32-byte secret is sealed (a KEYEDHASH object, fixedTPM|fixedParent, no
//! userWithAuth) under the owner hierarchy's ECC P-256 storage primary re-derived
//! from systemd's template, with a policy of PolicyPCR over the chosen SHA-256 PCRs.
//! The keyslot's passphrase is the secret in base64; its KDF is PBKDF2-SHA512 with
//! 1000 iterations (the secret has full entropy). The token holds the sealed blob
//! (TPM2B_PRIVATE ‖ TPM2B_PUBLIC), the PCRs, bank, primary algorithm and policy hash.
//!
//! The TPM commands go over a byte stream (the data channel of a vTPM speaking the
//! swtpm protocol: `cvm vtpm run`, swtpm, QEMU's backend) with password and policy
//! sessions, unsalted: the channel is the host's own socket to the VM's vTPM, whose
//! state the host holds anyway (ADR 0013).

use std::io::{Read, Write};

use aws_lc_rs::{digest, rand};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::image::{Luks2, VolumeKey};
use crate::kdf::KdfChoice;
use crate::metadata::Token;
use crate::{Error, device::Device};

/// The token type systemd reads.
pub const TOKEN_TYPE: &str = "systemd-tpm2";

const TPM_ST_NO_SESSIONS: u16 = 0x8001;
const TPM_ST_SESSIONS: u16 = 0x8002;
const TPM_RH_OWNER: u32 = 0x4000_0001;
const TPM_RH_NULL: u32 = 0x4000_0007;
const TPM_RS_PW: u32 = 0x4000_0009;
const CC_CREATE_PRIMARY: u32 = 0x131;
const CC_CREATE: u32 = 0x153;
const CC_LOAD: u32 = 0x157;
const CC_UNSEAL: u32 = 0x15E;
const CC_FLUSH_CONTEXT: u32 = 0x165;
const CC_START_AUTH_SESSION: u32 = 0x176;
const CC_PCR_READ: u32 = 0x17E;
const CC_POLICY_PCR: u32 = 0x17F;
const CC_PCR_EXTEND: u32 = 0x182;
const CC_STARTUP: u32 = 0x144;
const CC_SHUTDOWN: u32 = 0x145;
const CC_DA_LOCK_RESET: u32 = 0x139;
const CC_GET_CAPABILITY: u32 = 0x17A;
const TPM_CAP_TPM_PROPERTIES: u32 = 6;
const TPM_PT_PERMANENT: u32 = 0x200;
const TPM_PT_LOCKOUT_COUNTER: u32 = 0x20E;
/// TPMA_PERMANENT's lockoutAuthSet bit.
const LOCKOUT_AUTH_SET: u32 = 1 << 2;
const TPM_RH_LOCKOUT: u32 = 0x4000_000A;
/// `TPM_RC_INITIALIZE`: TPM2_Startup was already sent.
const TPM_RC_INITIALIZE: u32 = 0x100;
const CC_POLICY_GET_DIGEST: u32 = 0x189;
const ALG_SHA256: u16 = 0x000B;
/// The largest response accepted from a TPM.
const MAX_RESPONSE: usize = 64 << 10;

/// A TPM that executes marshalled commands.
pub trait Tpm {
    /// Sends one command and returns the whole response (wiped when dropped: an
    /// unseal's response holds the secret).
    fn execute(&mut self, command: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error>;
}

/// A TPM behind a byte stream: the swtpm protocol's data channel.
#[derive(Debug)]
pub struct StreamTpm<S>(pub S);

impl<S: Read + Write> Tpm for StreamTpm<S> {
    fn execute(&mut self, command: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let fail = |e: std::io::Error| Error::Tpm(format!("the vTPM connection: {e}"));
        self.0.write_all(command).map_err(fail)?;
        let mut header = [0u8; 10];
        self.0.read_exact(&mut header).map_err(fail)?;
        let size = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        if !(10..=MAX_RESPONSE).contains(&size) {
            return Err(Error::Tpm(format!("a TPM response of {size} bytes")));
        }
        let mut response = Zeroizing::new(vec![0u8; size]);
        response[..10].copy_from_slice(&header);
        self.0.read_exact(&mut response[10..]).map_err(fail)?;
        Ok(response)
    }
}

/// Connects to a vTPM's data channel: `unix:PATH`, or `tcp:HOST:PORT` on a loopback
/// address only (the sessions are unsalted: what is sealed and unsealed crosses
/// the channel in clear, so it must not leave the host).
pub fn connect(endpoint: &str) -> Result<Box<dyn Tpm>, Error> {
    use std::net::ToSocketAddrs;
    let fail = |e: std::io::Error| Error::Tpm(format!("connecting to the vTPM at {endpoint}: {e}"));
    if let Some(addr) = endpoint.strip_prefix("tcp:") {
        let addrs: Vec<_> = addr.to_socket_addrs().map_err(fail)?.collect();
        if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
            return Err(Error::Refused(format!(
                "the vTPM at {endpoint} is not on a loopback address: the channel carries the sealed secret in clear"
            )));
        }
        let s = std::net::TcpStream::connect(&addrs[..]).map_err(fail)?;
        Ok(Box::new(StreamTpm(s)))
    } else if let Some(path) = endpoint.strip_prefix("unix:") {
        let s = std::os::unix::net::UnixStream::connect(path).map_err(fail)?;
        Ok(Box::new(StreamTpm(s)))
    } else {
        Err(Error::Refused(format!(
            "a vTPM endpoint is tcp:HOST:PORT or unix:PATH, not {endpoint:?}"
        )))
    }
}

fn command(tag: u16, cc: u32, body: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(10 + body.len());
    c.extend_from_slice(&tag.to_be_bytes());
    c.extend_from_slice(&((10 + body.len()) as u32).to_be_bytes());
    c.extend_from_slice(&cc.to_be_bytes());
    c.extend_from_slice(body);
    c
}

fn tpm2b(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

/// An authorization area with one session and empty nonce and HMAC.
fn auth_area(session: u32) -> Vec<u8> {
    let mut a = 9u32.to_be_bytes().to_vec();
    a.extend_from_slice(&session.to_be_bytes());
    a.extend_from_slice(&[0, 0, 0, 0, 0]); // nonce empty, attributes 0, hmac empty
    a
}

/// A TPML_PCR_SELECTION of SHA-256 PCRs.
fn pcr_selection(pcrs: &[u32]) -> Vec<u8> {
    let mut bitmap = [0u8; 3];
    for p in pcrs {
        bitmap[(*p / 8) as usize] |= 1 << (p % 8);
    }
    let mut v = 1u32.to_be_bytes().to_vec();
    v.extend_from_slice(&ALG_SHA256.to_be_bytes());
    v.push(3);
    v.extend_from_slice(&bitmap);
    v
}

/// A response reader that refuses to run past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Tpm("a truncated TPM response".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn tpm2b(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

/// `TPM_RC_YIELDED`, `TPM_RC_TESTING`, `TPM_RC_RETRY`: the TPM asks for the same
/// command again (as tpm2-tss's ESYS does, we retry them).
const RC_TRY_AGAIN: [u32; 3] = [0x908, 0x90A, 0x922];

/// Runs a command and returns the response after its header, or the TPM's refusal.
fn run(tpm: &mut dyn Tpm, what: &str, cmd: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut attempt = 0;
    loop {
        let r = tpm.execute(cmd)?;
        let mut rd = Reader(&r);
        rd.take(6)?;
        let rc = rd.u32()?;
        if rc == 0 {
            return Ok(Zeroizing::new(r[10..].to_vec()));
        }
        attempt += 1;
        if !RC_TRY_AGAIN.contains(&rc) || attempt >= 50 {
            return Err(Error::TpmRefused {
                what: what.to_owned(),
                rc,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(10 * attempt));
    }
}

/// systemd's (legacy, before v254) storage primary template: ECC NIST P-256 with
/// AES-128-CFB, restricted|decrypt|fixedTPM|fixedParent|sensitiveDataOrigin|
/// userWithAuth, empty unique.
fn srk_template() -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&0x0023u16.to_be_bytes()); // ECC
    t.extend_from_slice(&ALG_SHA256.to_be_bytes());
    t.extend_from_slice(&0x0003_0072u32.to_be_bytes());
    t.extend_from_slice(&0u16.to_be_bytes()); // authPolicy
    t.extend_from_slice(&[0x00, 0x06, 0x00, 0x80, 0x00, 0x43]); // AES-128-CFB
    t.extend_from_slice(&0x0010u16.to_be_bytes()); // scheme NULL
    t.extend_from_slice(&0x0003u16.to_be_bytes()); // NIST P-256
    t.extend_from_slice(&0x0010u16.to_be_bytes()); // kdf NULL
    t.extend_from_slice(&[0, 0, 0, 0]); // unique x, y empty
    t
}

/// The sealed object's template: KEYEDHASH, SHA-256, fixedTPM|fixedParent, the
/// policy, scheme NULL.
fn sealed_template(policy: &[u8; 32]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&0x0008u16.to_be_bytes()); // KEYEDHASH
    t.extend_from_slice(&ALG_SHA256.to_be_bytes());
    t.extend_from_slice(&0x0000_0012u32.to_be_bytes());
    t.extend_from_slice(&tpm2b(policy));
    t.extend_from_slice(&0x0010u16.to_be_bytes()); // scheme NULL
    t.extend_from_slice(&0u16.to_be_bytes()); // unique empty
    t
}

fn create_primary(tpm: &mut dyn Tpm) -> Result<u32, Error> {
    let mut body = TPM_RH_OWNER.to_be_bytes().to_vec();
    body.extend_from_slice(&auth_area(TPM_RS_PW));
    body.extend_from_slice(&[0, 4, 0, 0, 0, 0]); // inSensitive: empty auth and data
    body.extend_from_slice(&tpm2b(&srk_template()));
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // outsideInfo, creationPCR
    let r = run(
        tpm,
        "TPM2_CreatePrimary",
        &command(TPM_ST_SESSIONS, CC_CREATE_PRIMARY, &body),
    )?;
    Reader(&r).u32()
}

fn flush(tpm: &mut dyn Tpm, handle: u32) {
    let _ = run(
        tpm,
        "TPM2_FlushContext",
        &command(TPM_ST_NO_SESSIONS, CC_FLUSH_CONTEXT, &handle.to_be_bytes()),
    );
}

/// Reads SHA-256 PCR values.
pub fn read_pcrs(tpm: &mut dyn Tpm, pcrs: &[u32]) -> Result<Vec<[u8; 32]>, Error> {
    let mut out = Vec::new();
    // A TPM returns at most eight digests per call.
    for chunk in pcrs.chunks(8) {
        let r = run(
            tpm,
            "TPM2_PCR_Read",
            &command(TPM_ST_NO_SESSIONS, CC_PCR_READ, &pcr_selection(chunk)),
        )?;
        let mut rd = Reader(&r);
        rd.u32()?; // update counter
        let count = rd.u32()?;
        for _ in 0..count {
            rd.take(2)?;
            let n = rd.take(1)?[0] as usize;
            rd.take(n)?;
        }
        let digests = rd.u32()? as usize;
        if digests != chunk.len() {
            return Err(Error::Tpm(format!(
                "the TPM returned {digests} of {} PCR values",
                chunk.len()
            )));
        }
        for _ in 0..digests {
            let d: [u8; 32] = rd
                .tpm2b()?
                .try_into()
                .map_err(|_| Error::Tpm("a PCR value that is not SHA-256".into()))?;
            out.push(d);
        }
    }
    Ok(out)
}

/// TPM2_Startup(CLEAR), as firmware sends it first; a TPM already started
/// (`TPM_RC_INITIALIZE`) is left as it is.
pub fn startup_clear(tpm: &mut dyn Tpm) -> Result<(), Error> {
    let r = tpm.execute(&command(
        TPM_ST_NO_SESSIONS,
        CC_STARTUP,
        &0u16.to_be_bytes(),
    ))?;
    let rc = r
        .get(6..10)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| Error::Tpm("a TPM2_Startup response shorter than its header".into()))?;
    match rc {
        0 | TPM_RC_INITIALIZE => Ok(()),
        rc => Err(Error::Tpm(format!(
            "the vTPM refused TPM2_Startup: response code {rc:#x}"
        ))),
    }
}

/// TPM2_Shutdown(CLEAR), as an OS sends it before power-off: the next
/// TPM2_Startup then follows an orderly shutdown (a TPM counts a disorderly one
/// against its dictionary-attack protection once DA-protected objects were used).
pub fn shutdown_clear(tpm: &mut dyn Tpm) -> Result<(), Error> {
    run(
        tpm,
        "TPM2_Shutdown",
        &command(TPM_ST_NO_SESSIONS, CC_SHUTDOWN, &0u16.to_be_bytes()),
    )?;
    Ok(())
}

/// One TPM property (TPM2_GetCapability of TPM_CAP_TPM_PROPERTIES).
fn tpm_property(tpm: &mut dyn Tpm, property: u32) -> Result<u32, Error> {
    let mut body = TPM_CAP_TPM_PROPERTIES.to_be_bytes().to_vec();
    body.extend_from_slice(&property.to_be_bytes());
    body.extend_from_slice(&1u32.to_be_bytes());
    let r = run(
        tpm,
        "TPM2_GetCapability",
        &command(TPM_ST_NO_SESSIONS, CC_GET_CAPABILITY, &body),
    )?;
    let mut rd = Reader(&r);
    rd.take(1)?; // moreData
    rd.u32()?; // capability
    let (count, got) = (rd.u32()?, rd.u32()?);
    if count < 1 || got != property {
        return Err(Error::Tpm(format!(
            "the TPM did not report property {property:#x}"
        )));
    }
    rd.u32()
}

/// The TPM's dictionary-attack state: whether a lockout authorization is set (not
/// the empty default), and the failure count.
pub fn dictionary_attack_state(tpm: &mut dyn Tpm) -> Result<(bool, u32), Error> {
    let permanent = tpm_property(tpm, TPM_PT_PERMANENT)?;
    let count = tpm_property(tpm, TPM_PT_LOCKOUT_COUNTER)?;
    Ok((permanent & LOCKOUT_AUTH_SET != 0, count))
}

/// TPM2_DictionaryAttackLockReset with the lockout hierarchy's empty (default)
/// authorization: the failure count and any lockout are cleared. A TPM whose owner
/// set a lockout authorization refuses it and counts the failure against its
/// lockout hierarchy, so check [`dictionary_attack_state`] first.
pub fn dictionary_attack_lock_reset(tpm: &mut dyn Tpm) -> Result<(), Error> {
    let mut body = TPM_RH_LOCKOUT.to_be_bytes().to_vec();
    body.extend_from_slice(&auth_area(TPM_RS_PW));
    run(
        tpm,
        "TPM2_DictionaryAttackLockReset",
        &command(TPM_ST_SESSIONS, CC_DA_LOCK_RESET, &body),
    )?;
    Ok(())
}

/// TPM2_PCR_Extend of `pcr` with one digest per bank: `(TPM_ALG_ID, digest)`, as
/// firmware measures an event (every bank the TPM allocates must be given).
pub fn pcr_extend(tpm: &mut dyn Tpm, pcr: u32, digests: &[(u16, &[u8])]) -> Result<(), Error> {
    let mut body = pcr.to_be_bytes().to_vec();
    body.extend_from_slice(&auth_area(TPM_RS_PW));
    body.extend_from_slice(&(digests.len() as u32).to_be_bytes());
    for (alg, d) in digests {
        body.extend_from_slice(&alg.to_be_bytes());
        body.extend_from_slice(d);
    }
    run(
        tpm,
        "TPM2_PCR_Extend",
        &command(TPM_ST_SESSIONS, CC_PCR_EXTEND, &body),
    )?;
    Ok(())
}

/// The policy digest of PolicyPCR over `pcrs` holding `values` (SHA-256 bank), from
/// an empty policy: what the TPM computes, and what the token's
/// `tpm2-policy-hash` records.
pub fn policy_pcr_digest(pcrs: &[u32], values: &[[u8; 32]]) -> [u8; 32] {
    let mut values_hash = digest::Context::new(&digest::SHA256);
    for v in values {
        values_hash.update(v);
    }
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&[0u8; 32]);
    ctx.update(&CC_POLICY_PCR.to_be_bytes());
    ctx.update(&pcr_selection(pcrs));
    ctx.update(values_hash.finish().as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Which PCRs a binding covers and the values it expects there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrBinding {
    /// PCR indices (0-23), ascending.
    pub pcrs: Vec<u32>,
    /// Their expected SHA-256 values, one per PCR; `None` for each means "as they
    /// are now in the vTPM".
    pub values: Vec<Option<[u8; 32]>>,
}

impl PcrBinding {
    /// Parses systemd-cryptenroll's syntax: `7`, `0+7`, `7:sha256=HEX` (an expected
    /// value), comma or plus separated; empty for no PCRs.
    pub fn parse(spec: &str) -> Result<Self, Error> {
        let bad = |m: String| Error::Refused(format!("--tpm2-pcrs {spec:?}: {m}"));
        let mut items: Vec<(u32, Option<[u8; 32]>)> = Vec::new();
        for item in spec
            .split([',', '+'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (index, value) = match item.split_once(':') {
                None => (item, None),
                Some((i, v)) => {
                    let hex = v
                        .strip_prefix("sha256=")
                        .ok_or_else(|| bad("only the sha256 bank is supported".into()))?;
                    let mut value = [0u8; 32];
                    hex::decode_to_slice(hex, &mut value)
                        .map_err(|_| bad(format!("PCR value {hex:?} is not 32 bytes of hex")))?;
                    (i, Some(value))
                }
            };
            let index: u32 = index
                .parse()
                .map_err(|_| bad(format!("{index:?} is not a PCR number")))?;
            if index > 23 || items.iter().any(|(i, _)| *i == index) {
                return Err(bad(format!("PCR {index} is out of range or repeated")));
            }
            items.push((index, value));
        }
        items.sort_by_key(|(i, _)| *i);
        Ok(Self {
            pcrs: items.iter().map(|(i, _)| *i).collect(),
            values: items.into_iter().map(|(_, v)| v).collect(),
        })
    }
}

/// A `systemd-tpm2` token's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tpm2Token {
    /// The keyslot it opens.
    pub keyslot: u32,
    /// TPM2B_PRIVATE of the sealed object (with its size).
    pub private: Vec<u8>,
    /// TPM2B_PUBLIC of the sealed object (with its size).
    pub public: Vec<u8>,
    /// PCRs of the policy.
    pub pcrs: Vec<u32>,
    /// The policy digest.
    pub policy_hash: [u8; 32],
}

impl Tpm2Token {
    /// The token JSON, field for field as systemd-cryptenroll 252 writes it.
    pub fn to_token(&self) -> Token {
        let mut blob = self.private.clone();
        blob.extend_from_slice(&self.public);
        let mut other = Map::new();
        other.insert("tpm2-blob".into(), Value::String(B64.encode(&blob)));
        other.insert("tpm2-pcrs".into(), Value::from(self.pcrs.clone()));
        other.insert("tpm2-pcr-bank".into(), Value::String("sha256".into()));
        other.insert("tpm2-primary-alg".into(), Value::String("ecc".into()));
        other.insert(
            "tpm2-policy-hash".into(),
            Value::String(hex::encode(self.policy_hash)),
        );
        other.insert("tpm2-pin".into(), Value::Bool(false));
        Token {
            kind: TOKEN_TYPE.into(),
            keyslots: vec![self.keyslot.to_string()],
            other,
        }
    }

    /// Reads a token (ours or systemd's); what opencvm cannot unseal is refused by
    /// name.
    pub fn from_token(t: &Token) -> Result<Self, Error> {
        let bad = |m: &str| Error::Refused(format!("systemd-tpm2 token: {m}"));
        if t.kind != TOKEN_TYPE {
            return Err(bad("not a systemd-tpm2 token"));
        }
        let [slot] = t.keyslots.as_slice() else {
            return Err(bad("it must name exactly one keyslot"));
        };
        let keyslot = slot
            .parse()
            .map_err(|_| bad("its keyslot is not a number"))?;
        let get = |k: &str| t.other.get(k);
        for unsupported in [
            "tpm2_pubkey",
            "tpm2_pubkey_pcrs",
            "tpm2_srk",
            "tpm2_pcrlock",
            "tpm2_salt",
        ] {
            if get(unsupported).is_some_and(|v| {
                !v.is_null() && v != &Value::Array(vec![]) && v != &Value::Bool(false)
            }) {
                return Err(bad(&format!(
                    "{unsupported} (signed policies, a persistent SRK, pcrlock or a PIN salt) is not supported"
                )));
            }
        }
        if get("tpm2-pin").and_then(Value::as_bool) == Some(true) {
            return Err(bad("a PIN-protected token is not supported"));
        }
        if get("tpm2-pcr-bank")
            .and_then(Value::as_str)
            .is_some_and(|b| b != "sha256")
        {
            return Err(bad("only the sha256 PCR bank is supported"));
        }
        if get("tpm2-primary-alg")
            .and_then(Value::as_str)
            .is_some_and(|a| a != "ecc")
        {
            return Err(bad("only an ECC primary is supported"));
        }
        let blob = get("tpm2-blob")
            .and_then(Value::as_str)
            .and_then(|s| B64.decode(s).ok())
            .ok_or_else(|| bad("tpm2-blob is missing or not base64"))?;
        let mut rd = Reader(&blob);
        let private = tpm2b(rd.tpm2b().map_err(|_| bad("tpm2-blob is truncated"))?);
        let public = tpm2b(rd.tpm2b().map_err(|_| bad("tpm2-blob is truncated"))?);
        if !rd.0.is_empty() {
            return Err(bad(
                "an offline-sealed blob (with an import seed) is not supported",
            ));
        }
        let pcrs: Vec<u32> = get("tpm2-pcrs")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("tpm2-pcrs is missing"))?
            .iter()
            .map(|v| v.as_u64().filter(|p| *p < 24).map(|p| p as u32))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("tpm2-pcrs holds something other than PCR numbers"))?;
        let hash = get("tpm2-policy-hash")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("tpm2-policy-hash is missing"))?;
        let mut policy_hash = [0u8; 32];
        hex::decode_to_slice(hash, &mut policy_hash)
            .map_err(|_| bad("tpm2-policy-hash is not 32 bytes of hex"))?;
        Ok(Self {
            keyslot,
            private,
            public,
            pcrs,
            policy_hash,
        })
    }
}

/// What [`enroll`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    /// The new keyslot.
    pub keyslot: u32,
    /// The new token.
    pub token: u32,
    /// PCRs sealed to their current value while it is all zero (nothing measured
    /// yet): a guest will not unseal once its firmware measures them.
    pub unmeasured: Vec<u32>,
}

/// The policy digest a binding to `pcrs` holding `values` gives: PolicyPCR's, or
/// (no PCRs) the empty policy's, all zero, as systemd computes it.
fn policy_for(pcrs: &[u32], values: &[[u8; 32]]) -> [u8; 32] {
    if pcrs.is_empty() {
        [0; 32]
    } else {
        policy_pcr_digest(pcrs, values)
    }
}

/// The values `binding` expects: the given ones, the vTPM's current ones for the
/// rest; and which of those current ones are all zero.
fn expected_values(
    tpm: &mut dyn Tpm,
    binding: &PcrBinding,
) -> Result<(Vec<[u8; 32]>, Vec<u32>), Error> {
    let current = read_pcrs(tpm, &binding.pcrs)?;
    let mut unmeasured = Vec::new();
    let values = binding
        .values
        .iter()
        .zip(current)
        .zip(&binding.pcrs)
        .map(|((given, now), pcr)| {
            given.unwrap_or_else(|| {
                if now == [0; 32] {
                    unmeasured.push(*pcr);
                }
                now
            })
        })
        .collect();
    Ok((values, unmeasured))
}

/// Seals a new random secret to `tpm` under `binding`, adds a keyslot whose
/// passphrase is that secret (base64) holding `key`, and records the token, in one
/// header write (the keyslot's area is flushed before it).
pub fn enroll<D: Device + ?Sized>(
    luks: &mut Luks2,
    file: &D,
    key: &VolumeKey,
    tpm: &mut dyn Tpm,
    binding: &PcrBinding,
) -> Result<Enrolled, Error> {
    let (values, unmeasured) = expected_values(tpm, binding)?;
    let policy = policy_for(&binding.pcrs, &values);
    let mut secret = Zeroizing::new([0u8; 32]);
    rand::fill(&mut secret[..]).map_err(|_| Error::Random)?;
    let primary = create_primary(tpm)?;
    let sealed = (|| {
        // Every buffer the secret enters is sized first: a Vec that grew would leave
        // the secret in the freed buffer, which Zeroizing does not see.
        let template = tpm2b(&sealed_template(&policy));
        let mut sensitive = Zeroizing::new(Vec::with_capacity(4 + secret.len()));
        sensitive.extend_from_slice(&[0, 0]); // userAuth empty
        sensitive.extend_from_slice(&(secret.len() as u16).to_be_bytes());
        sensitive.extend_from_slice(&secret[..]);
        let mut body = Zeroizing::new(Vec::with_capacity(
            4 + 13 + 2 + sensitive.len() + template.len() + 6,
        ));
        body.extend_from_slice(&primary.to_be_bytes());
        body.extend_from_slice(&auth_area(TPM_RS_PW));
        body.extend_from_slice(&(sensitive.len() as u16).to_be_bytes());
        body.extend_from_slice(&sensitive);
        body.extend_from_slice(&template);
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let cmd = Zeroizing::new(command(TPM_ST_SESSIONS, CC_CREATE, &body));
        let r = run(tpm, "TPM2_Create", &cmd)?;
        let mut rd = Reader(&r);
        rd.u32()?; // parameterSize
        let private = rd.tpm2b()?;
        let public = rd.tpm2b()?;
        Ok::<_, Error>((tpm2b(private), tpm2b(public)))
    })();
    flush(tpm, primary);
    let (private, public) = sealed?;
    let passphrase = Zeroizing::new(B64.encode(&secret[..]));
    let id = (0..crate::metadata::MAX_OBJECTS)
        .find(|n| !luks.metadata.tokens.contains_key(n))
        .ok_or(Error::NoRoom)?;
    let mut staged = luks.clone();
    let slot = staged.stage_keyslot(file, key, passphrase.as_bytes(), KdfChoice::Minimal)?;
    let token = Tpm2Token {
        keyslot: slot,
        private,
        public,
        pcrs: binding.pcrs.clone(),
        policy_hash: policy,
    };
    staged.metadata.tokens.insert(id, token.to_token());
    staged.write(file)?;
    *luks = staged;
    Ok(Enrolled {
        keyslot: slot,
        token: id,
        unmeasured,
    })
}

/// Whether `token` already binds to this vTPM as `binding` asks: the same PCRs, the
/// policy digest the expected values give, and a blob this vTPM loads.
pub fn binds_as(tpm: &mut dyn Tpm, token: &Tpm2Token, binding: &PcrBinding) -> Result<bool, Error> {
    if token.pcrs != binding.pcrs {
        return Ok(false);
    }
    let (values, _) = expected_values(tpm, binding)?;
    if token.policy_hash != policy_for(&binding.pcrs, &values) {
        return Ok(false);
    }
    match load(tpm, token) {
        Ok(object) => {
            flush(tpm, object);
            Ok(true)
        }
        // TPM_RC_INTEGRITY or TPM_RC_BINDING from TPM2_Load: sealed by another TPM
        // (or changed). Any other refusal is passed up, not taken for an answer.
        Err(Error::TpmRefused { what, rc })
            if what == "TPM2_Load" && [0x9f, 0xa5].contains(&crate::tpm_rc_code(rc)) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Loads a token's sealed object under the re-derived primary.
fn load(tpm: &mut dyn Tpm, token: &Tpm2Token) -> Result<u32, Error> {
    let primary = create_primary(tpm)?;
    let mut body = primary.to_be_bytes().to_vec();
    body.extend_from_slice(&auth_area(TPM_RS_PW));
    body.extend_from_slice(&token.private);
    body.extend_from_slice(&token.public);
    let loaded = run(tpm, "TPM2_Load", &command(TPM_ST_SESSIONS, CC_LOAD, &body))
        .and_then(|r| Reader(&r).u32());
    flush(tpm, primary);
    loaded
}

/// Unseals a token's secret through `tpm` and returns the keyslot passphrase
/// (base64 of the secret). Fails with the TPM's refusal when the PCRs differ from
/// those sealed to.
pub fn unseal(tpm: &mut dyn Tpm, token: &Tpm2Token) -> Result<Zeroizing<Vec<u8>>, Error> {
    let object = load(tpm, token)?;
    let result = (|| {
        let mut nonce = [0u8; 16];
        rand::fill(&mut nonce).map_err(|_| Error::Random)?;
        let mut body = TPM_RH_NULL.to_be_bytes().to_vec();
        body.extend_from_slice(&TPM_RH_NULL.to_be_bytes());
        body.extend_from_slice(&tpm2b(&nonce));
        body.extend_from_slice(&[0, 0, 0x01]); // no salt, a policy session
        body.extend_from_slice(&0x0010u16.to_be_bytes()); // symmetric NULL
        body.extend_from_slice(&ALG_SHA256.to_be_bytes());
        let r = run(
            tpm,
            "TPM2_StartAuthSession",
            &command(TPM_ST_NO_SESSIONS, CC_START_AUTH_SESSION, &body),
        )?;
        let session = Reader(&r).u32()?;
        let unsealed = (|| {
            // No PCRs: the empty policy, as systemd seals it.
            if !token.pcrs.is_empty() {
                let mut body = session.to_be_bytes().to_vec();
                body.extend_from_slice(&[0, 0]); // pcrDigest: the TPM's current values
                body.extend_from_slice(&pcr_selection(&token.pcrs));
                run(
                    tpm,
                    "TPM2_PolicyPCR",
                    &command(TPM_ST_NO_SESSIONS, CC_POLICY_PCR, &body),
                )?;
            }
            let r = run(
                tpm,
                "TPM2_PolicyGetDigest",
                &command(
                    TPM_ST_NO_SESSIONS,
                    CC_POLICY_GET_DIGEST,
                    &session.to_be_bytes(),
                ),
            )?;
            if Reader(&r).tpm2b()? != token.policy_hash {
                return Err(Error::Tpm(format!(
                    "the vTPM's PCRs {:?} are not those the disk was sealed to",
                    token.pcrs
                )));
            }
            let mut body = object.to_be_bytes().to_vec();
            body.extend_from_slice(&auth_area(session));
            let r = run(
                tpm,
                "TPM2_Unseal",
                &command(TPM_ST_SESSIONS, CC_UNSEAL, &body),
            )?;
            let mut rd = Reader(&r);
            rd.u32()?;
            Ok(Zeroizing::new(B64.encode(rd.tpm2b()?).into_bytes()))
        })();
        flush(tpm, session);
        unsealed
    })();
    flush(tpm, object);
    result
}

/// Opens `luks` through its first `systemd-tpm2` token and `tpm`.
pub fn unlock<D: Device + ?Sized>(
    luks: &Luks2,
    file: &D,
    tpm: &mut dyn Tpm,
) -> Result<(u32, VolumeKey), Error> {
    let token = luks
        .metadata
        .tokens
        .values()
        .find(|t| t.kind == TOKEN_TYPE)
        .ok_or_else(|| Error::Refused("the image has no systemd-tpm2 token".into()))?;
    let token = Tpm2Token::from_token(token)?;
    let passphrase = unseal(tpm, &token)?;
    luks.unlock(file, &passphrase, Some(token.keyslot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pcr7_policy_of_an_unmeasured_tpm_is_systemds() {
        // systemd-cryptenroll 252 against a vTPM whose PCR 7 is all zero wrote this
        // tpm2-policy-hash (and the research note computed it the same way).
        assert_eq!(
            hex::encode(policy_pcr_digest(&[7], &[[0; 32]])),
            "8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b"
        );
    }

    #[test]
    fn hex_fields_that_are_not_ascii_are_refused_not_a_panic() {
        // 64 bytes, but with two-byte characters at odd offsets: slicing the text by
        // byte pairs would split one (and panic).
        let odd = format!("a{}b", "é".repeat(31));
        assert_eq!(odd.len(), 64);
        let spec = format!("7:sha256={odd}");
        assert!(PcrBinding::parse(&spec).is_err());
        let mut token = Tpm2Token {
            keyslot: 1,
            private: tpm2b(&[1; 4]),
            public: tpm2b(&[2; 4]),
            pcrs: vec![7],
            policy_hash: [3; 32],
        }
        .to_token();
        assert!(Tpm2Token::from_token(&token).is_ok());
        token
            .other
            .insert("tpm2-policy-hash".into(), Value::String(odd));
        assert!(Tpm2Token::from_token(&token).is_err());
    }

    #[test]
    fn pcr_specs_parse_as_systemd_writes_them() {
        let b = PcrBinding::parse("7").unwrap();
        assert_eq!((b.pcrs, b.values), (vec![7], vec![None]));
        let b = PcrBinding::parse(&format!("7:sha256={},0", "ab".repeat(32))).unwrap();
        assert_eq!(b.pcrs, vec![0, 7]);
        assert_eq!(b.values[1], Some([0xab; 32]));
        assert_eq!(PcrBinding::parse("").unwrap().pcrs, Vec::<u32>::new());
        for bad in ["24", "7,7", "x", "7:sha1=00"] {
            assert!(PcrBinding::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn auth_area_is_a_password_session() {
        assert_eq!(
            auth_area(TPM_RS_PW),
            [0, 0, 0, 9, 0x40, 0, 0, 9, 0, 0, 0, 0, 0]
        );
    }
}
