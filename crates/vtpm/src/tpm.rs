//! The few TPM 2.0 commands the host side of the vTPM sends itself (provisioning and
//! the platform lock), marshalled per TPM 2.0 Library Part 2/3, and readers for their
//! responses.

use crate::engine::{Engine, EngineError};

/// `TPM_RH_OWNER`.
pub const RH_OWNER: u32 = 0x4000_0001;
/// `TPM_RH_ENDORSEMENT`.
pub const RH_ENDORSEMENT: u32 = 0x4000_000B;
/// `TPM_RH_PLATFORM`.
pub const RH_PLATFORM: u32 = 0x4000_000C;
/// `TPM_RS_PW`: the password session.
pub const RS_PW: u32 = 0x4000_0009;

/// Command codes used here and by the interception in [`crate::platform`].
pub mod cc {
    /// `TPM2_NV_UndefineSpace`.
    pub const NV_UNDEFINE_SPACE: u32 = 0x122;
    /// `TPM2_EvictControl`.
    pub const EVICT_CONTROL: u32 = 0x120;
    /// `TPM2_Clear`.
    pub const CLEAR: u32 = 0x126;
    /// `TPM2_ClearControl`.
    pub const CLEAR_CONTROL: u32 = 0x127;
    /// `TPM2_HierarchyChangeAuth`.
    pub const HIERARCHY_CHANGE_AUTH: u32 = 0x129;
    /// `TPM2_NV_DefineSpace`.
    pub const NV_DEFINE_SPACE: u32 = 0x12A;
    /// `TPM2_CreatePrimary`.
    pub const CREATE_PRIMARY: u32 = 0x131;
    /// `TPM2_NV_Write`.
    pub const NV_WRITE: u32 = 0x137;
    /// `TPM2_Startup`.
    pub const STARTUP: u32 = 0x144;
    /// `TPM2_Shutdown`.
    pub const SHUTDOWN: u32 = 0x145;
    /// `TPM2_NV_Read`.
    pub const NV_READ: u32 = 0x14E;
    /// `TPM2_FlushContext`.
    pub const FLUSH_CONTEXT: u32 = 0x165;
    /// `TPM2_NV_ReadPublic`.
    pub const NV_READ_PUBLIC: u32 = 0x169;
    /// `TPM2_ReadPublic`.
    pub const READ_PUBLIC: u32 = 0x173;
    /// `TPM2_StartAuthSession`.
    pub const START_AUTH_SESSION: u32 = 0x176;
}

/// `TPM_RC_INITIALIZE`: `TPM2_Startup` was already done.
pub const RC_INITIALIZE: u32 = 0x100;
/// `TPM_RC_NV_RANGE`.
pub const RC_NV_RANGE: u32 = 0x146;
/// `TPM_RC_RETRY`.
pub const RC_RETRY: u32 = 0x922;

/// A command being marshalled.
#[derive(Debug)]
pub struct Command {
    buf: Vec<u8>,
    sessions_at: Option<usize>,
}

impl Command {
    /// A command with code `code`; `sessions` says whether it carries an
    /// authorization area (tag `TPM_ST_SESSIONS`).
    pub fn new(code: u32, sessions: bool) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&(if sessions { 0x8002u16 } else { 0x8001 }).to_be_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&code.to_be_bytes());
        Self {
            buf,
            sessions_at: None,
        }
    }

    /// Appends a big-endian u16.
    pub fn u16(mut self, v: u16) -> Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a big-endian u32 (a handle, attributes, ...).
    pub fn u32(mut self, v: u32) -> Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends raw bytes.
    pub fn bytes(mut self, v: &[u8]) -> Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// Appends a TPM2B (u16 size + bytes).
    pub fn tpm2b(self, v: &[u8]) -> Self {
        let n = v.len() as u16;
        self.u16(n).bytes(v)
    }

    /// Appends an authorization area with one password session carrying `password`.
    pub fn password(mut self, password: &[u8]) -> Self {
        self.sessions_at = Some(self.buf.len());
        let size = 4 + 2 + 1 + 2 + password.len() as u32;
        self.u32(size)
            .u32(RS_PW)
            .u16(0)
            .bytes(&[0x01])
            .tpm2b(password)
    }

    /// The marshalled command with its size filled in.
    pub fn finish(mut self) -> Vec<u8> {
        let n = (self.buf.len() as u32).to_be_bytes();
        self.buf[2..6].copy_from_slice(&n);
        self.buf
    }
}

/// A response: its code and the bytes after the header.
#[derive(Debug, Clone)]
pub struct Response {
    /// The response code.
    pub rc: u32,
    /// Everything after the 10-byte header.
    pub body: Vec<u8>,
    /// Whether the response has an authorization area (tag `TPM_ST_SESSIONS`).
    pub sessions: bool,
}

impl Response {
    /// Splits a raw response.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        if raw.len() < 10 {
            return None;
        }
        Some(Self {
            rc: u32::from_be_bytes([raw[6], raw[7], raw[8], raw[9]]),
            body: raw[10..].to_vec(),
            sessions: raw[0..2] == [0x80, 0x02],
        })
    }

    /// The response parameters, skipping `handles` handles and (with sessions) the
    /// parameter size.
    pub fn params(&self, handles: usize) -> Option<&[u8]> {
        let rest = self.body.get(4 * handles..)?;
        if self.sessions {
            let size = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            rest.get(4..4 + size)
        } else {
            Some(rest)
        }
    }

    /// The authorization area after the parameters (with sessions).
    pub fn auth_area(&self, handles: usize) -> Option<&[u8]> {
        let rest = self.body.get(4 * handles..)?;
        let size = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        rest.get(4 + size..)
    }

    /// The first handle of the response.
    pub fn handle(&self) -> Option<u32> {
        Some(u32::from_be_bytes(self.body.get(..4)?.try_into().ok()?))
    }
}

/// Reads a TPM2B at the start of `b`: (contents, rest).
pub fn take_tpm2b(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = u16::from_be_bytes([*b.first()?, *b.get(1)?]) as usize;
    Some((b.get(2..2 + n)?, b.get(2 + n..)?))
}

/// Executes `cmd` at locality 0 and splits the response.
pub fn run(engine: &mut dyn Engine, cmd: Vec<u8>) -> Result<Response, EngineError> {
    let raw = engine.execute(0, &cmd)?;
    Response::parse(&raw).ok_or_else(|| {
        EngineError::new(
            crate::engine::TPM_FAIL,
            "short response from the TPM engine",
        )
    })
}

/// Like [`run`], but a non-zero response code is an error naming `what`.
pub fn run_ok(engine: &mut dyn Engine, what: &str, cmd: Vec<u8>) -> Result<Response, EngineError> {
    let r = run(engine, cmd)?;
    if r.rc != 0 {
        return Err(EngineError::new(
            crate::engine::TPM_FAIL,
            format!("{what} failed with TPM response code {:#x}", r.rc),
        ));
    }
    Ok(r)
}

/// `TPM2_Startup(SU_CLEAR)`.
pub fn startup_clear() -> Vec<u8> {
    Command::new(cc::STARTUP, false).u16(0).finish()
}

/// `TPM2_Shutdown(SU_CLEAR)`.
pub fn shutdown_clear() -> Vec<u8> {
    Command::new(cc::SHUTDOWN, false).u16(0).finish()
}

/// `TPM2_CreatePrimary` in `hierarchy` from a marshalled `TPMT_PUBLIC` template.
pub fn create_primary(hierarchy: u32, template: &[u8]) -> Vec<u8> {
    Command::new(cc::CREATE_PRIMARY, true)
        .u32(hierarchy)
        .password(&[])
        .u16(4) // TPM2B_SENSITIVE_CREATE: empty userAuth and data
        .u16(0)
        .u16(0)
        .tpm2b(template)
        .u16(0) // outsideInfo
        .u32(0) // creationPCR: no selections
        .finish()
}

/// `TPM2_ReadPublic(handle)`.
pub fn read_public(handle: u32) -> Vec<u8> {
    Command::new(cc::READ_PUBLIC, false).u32(handle).finish()
}

/// `TPM2_EvictControl(owner, object, persistent)` with an empty owner password.
pub fn evict_control(object: u32, persistent: u32) -> Vec<u8> {
    evict_control_as(RH_OWNER, &[], object, persistent)
}

/// `TPM2_EvictControl(auth, object, persistent)` with `password` for `auth` (owner or
/// platform). With `object == persistent` it removes a persistent object.
pub fn evict_control_as(auth: u32, password: &[u8], object: u32, persistent: u32) -> Vec<u8> {
    Command::new(cc::EVICT_CONTROL, true)
        .u32(auth)
        .u32(object)
        .password(password)
        .u32(persistent)
        .finish()
}

/// `TPM2_ClearControl(platform, disable)`: with `disable` set, `TPM2_Clear` is refused
/// (`TPM_RC_DISABLED`) until the platform hierarchy clears the flag again.
pub fn clear_control_platform(platform_auth: &[u8], disable: bool) -> Vec<u8> {
    Command::new(cc::CLEAR_CONTROL, true)
        .u32(RH_PLATFORM)
        .password(platform_auth)
        .bytes(&[u8::from(disable)])
        .finish()
}

/// `TPM2_FlushContext(handle)`.
pub fn flush_context(handle: u32) -> Vec<u8> {
    Command::new(cc::FLUSH_CONTEXT, false).u32(handle).finish()
}

/// A marshalled `TPMS_NV_PUBLIC` (SHA-256 name algorithm, no policy).
pub fn nv_public(index: u32, attributes: u32, size: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(14);
    v.extend_from_slice(&index.to_be_bytes());
    v.extend_from_slice(&0x000Bu16.to_be_bytes());
    v.extend_from_slice(&attributes.to_be_bytes());
    v.extend_from_slice(&0u16.to_be_bytes());
    v.extend_from_slice(&size.to_be_bytes());
    v
}

/// `TPM2_NV_DefineSpace` under the platform hierarchy.
pub fn nv_define_platform(index: u32, attributes: u32, size: u16, platform_auth: &[u8]) -> Vec<u8> {
    Command::new(cc::NV_DEFINE_SPACE, true)
        .u32(RH_PLATFORM)
        .password(platform_auth)
        .u16(0) // the index's authValue: empty
        .tpm2b(&nv_public(index, attributes, size))
        .finish()
}

/// `TPM2_NV_UndefineSpace` of a platform index.
pub fn nv_undefine_platform(index: u32, platform_auth: &[u8]) -> Vec<u8> {
    Command::new(cc::NV_UNDEFINE_SPACE, true)
        .u32(RH_PLATFORM)
        .u32(index)
        .password(platform_auth)
        .finish()
}

/// `TPM2_NV_Write(auth, index, data, offset)`.
pub fn nv_write(auth: u32, index: u32, password: &[u8], data: &[u8], offset: u16) -> Vec<u8> {
    Command::new(cc::NV_WRITE, true)
        .u32(auth)
        .u32(index)
        .password(password)
        .tpm2b(data)
        .u16(offset)
        .finish()
}

/// `TPM2_NV_Read(auth, index, size, offset)`.
pub fn nv_read(auth: u32, index: u32, password: &[u8], size: u16, offset: u16) -> Vec<u8> {
    Command::new(cc::NV_READ, true)
        .u32(auth)
        .u32(index)
        .password(password)
        .u16(size)
        .u16(offset)
        .finish()
}

/// `TPM2_NV_ReadPublic(index)`.
pub fn nv_read_public(index: u32) -> Vec<u8> {
    Command::new(cc::NV_READ_PUBLIC, false).u32(index).finish()
}

/// `TPM2_HierarchyChangeAuth(platform)`: sets platformAuth to `new_auth`.
pub fn change_platform_auth(current: &[u8], new_auth: &[u8]) -> Vec<u8> {
    Command::new(cc::HIERARCHY_CHANGE_AUTH, true)
        .u32(RH_PLATFORM)
        .password(current)
        .tpm2b(new_auth)
        .finish()
}

/// Writes `data` to an index in chunks the TPM accepts (1024 bytes).
pub fn nv_write_all(
    engine: &mut dyn Engine,
    auth: u32,
    index: u32,
    password: &[u8],
    data: &[u8],
) -> Result<(), EngineError> {
    for (i, chunk) in data.chunks(1024).enumerate() {
        let offset = (i * 1024) as u16;
        run_ok(
            engine,
            "TPM2_NV_Write",
            nv_write(auth, index, password, chunk, offset),
        )?;
    }
    Ok(())
}

/// Reads `size` bytes of an index in chunks of 1024, authorizing with `auth`.
pub fn nv_read_all(
    engine: &mut dyn Engine,
    auth: u32,
    index: u32,
    password: &[u8],
    size: u16,
) -> Result<Vec<u8>, EngineError> {
    let mut out = Vec::with_capacity(size as usize);
    while out.len() < size as usize {
        let n = (size as usize - out.len()).min(1024) as u16;
        let r = run_ok(
            engine,
            "TPM2_NV_Read",
            nv_read(auth, index, password, n, out.len() as u16),
        )?;
        let (data, _) = r.params(0).and_then(take_tpm2b).ok_or_else(|| {
            EngineError::new(crate::engine::TPM_FAIL, "malformed NV_Read response")
        })?;
        if data.is_empty() {
            break;
        }
        out.extend_from_slice(data);
    }
    Ok(out)
}

/// `dataSize` of an NV index from its `TPM2_NV_ReadPublic`, `None` if it is not defined.
pub fn nv_size(engine: &mut dyn Engine, index: u32) -> Result<Option<u16>, EngineError> {
    let r = run(engine, nv_read_public(index))?;
    if r.rc != 0 {
        return Ok(None);
    }
    let (public, _) = take_tpm2b(&r.body)
        .ok_or_else(|| EngineError::new(crate::engine::TPM_FAIL, "malformed NV_ReadPublic"))?;
    // nvIndex(4) nameAlg(2) attributes(4) authPolicy(TPM2B) dataSize(2)
    let (_, rest) = public
        .get(10..)
        .and_then(take_tpm2b)
        .ok_or_else(|| EngineError::new(crate::engine::TPM_FAIL, "malformed TPMS_NV_PUBLIC"))?;
    Ok(rest.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])))
}
