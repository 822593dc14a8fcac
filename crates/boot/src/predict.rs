//! PCR 7 prediction: the Secure Boot events firmware (edk2/OVMF) and shim measure,
//! computed from the VM's variable store and the boot chain it will verify, so that a
//! disk key can be sealed to PCR 7 before the VM first boots.
//!
//! Firmware measures `EV_EFI_VARIABLE_DRIVER_CONFIG` events for `SecureBoot`, `PK`,
//! `KEK`, `db`, `dbx` (absent variables with empty data) and `dbt` (when present), then
//! `EV_SEPARATOR`, then one `EV_EFI_VARIABLE_AUTHORITY` per distinct db entry that
//! verified an image. shim adds its own authority events (see [`predict`]).

use serde::Serialize;
use tcg_eventlog::Guid;

use crate::esl::Entry;
use crate::pe::HashAlg;
use crate::varstore::{VariableStore, secure_boot_namespace};

/// `EV_SEPARATOR`.
pub const EV_SEPARATOR: u32 = 0x4;
/// `EV_EFI_VARIABLE_DRIVER_CONFIG`.
pub const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
/// `EV_EFI_VARIABLE_AUTHORITY`.
pub const EV_EFI_VARIABLE_AUTHORITY: u32 = 0x8000_00E0;

/// One predicted PCR 7 event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pcr7Event {
    /// The event type.
    pub event_type: u32,
    /// What it measures (`SecureBoot`, `db`, `separator`, …).
    pub what: String,
    /// The event data; its hash is what is extended.
    #[serde(serialize_with = "ser_hex")]
    pub data: Vec<u8>,
}

fn ser_hex<S: serde::Serializer>(d: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(d))
}

/// A `UEFI_VARIABLE_DATA`: GUID, name length (UTF-16 units), data length, name, data.
pub fn uefi_variable_data(guid: Guid, name: &str, data: &[u8]) -> Vec<u8> {
    let name: Vec<u16> = name.encode_utf16().collect();
    let mut out = guid.0.to_vec();
    out.extend_from_slice(&(name.len() as u64).to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend(name.iter().flat_map(|u| u.to_le_bytes()));
    out.extend_from_slice(data);
    out
}

fn variable_event(event_type: u32, guid: Guid, name: &str, data: &[u8]) -> Pcr7Event {
    Pcr7Event {
        event_type,
        what: name.to_string(),
        data: uefi_variable_data(guid, name, data),
    }
}

/// The events firmware measures before any image is verified: the Secure Boot
/// configuration, then the separator.
pub fn configuration_events(store: &VariableStore) -> Vec<Pcr7Event> {
    let mut events = vec![variable_event(
        EV_EFI_VARIABLE_DRIVER_CONFIG,
        Guid::EFI_GLOBAL_VARIABLE,
        "SecureBoot",
        &[u8::from(store.secure_boot())],
    )];
    for name in ["PK", "KEK", "db", "dbx"] {
        let guid = secure_boot_namespace(name);
        let data = store
            .get(name, guid)
            .map(|v| v.data.as_slice())
            .unwrap_or(&[]);
        events.push(variable_event(
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            guid,
            name,
            data,
        ));
    }
    // edk2 measures dbt only when it exists and is not empty.
    if let Some(dbt) = store
        .get("dbt", Guid::IMAGE_SECURITY_DATABASE)
        .filter(|v| !v.data.is_empty())
    {
        events.push(variable_event(
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            Guid::IMAGE_SECURITY_DATABASE,
            "dbt",
            &dbt.data,
        ));
    }
    events.push(Pcr7Event {
        event_type: EV_SEPARATOR,
        what: "separator".into(),
        data: vec![0; 4],
    });
    events
}

/// The authority event firmware measures when db entry `entry` verifies an image.
pub fn db_authority_event(entry: &Entry) -> Pcr7Event {
    variable_event(
        EV_EFI_VARIABLE_AUTHORITY,
        Guid::IMAGE_SECURITY_DATABASE,
        "db",
        &entry.signature_data(),
    )
}

/// Replays `events` into a PCR starting at zero.
pub fn replay(events: &[Pcr7Event], alg: HashAlg) -> Vec<u8> {
    let mut pcr = vec![0u8; alg.digest_len()];
    for e in events {
        let mut m = pcr.clone();
        m.extend_from_slice(&alg.digest(&e.data));
        pcr = alg.digest(&m);
    }
    pcr
}

/// shim's SBAT level on a fresh store (no revocations).
pub const SBAT_LEVEL_ORIGINAL: &[u8] = b"sbat,1,2021030218\n";

/// One stage of the predicted boot chain.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    /// `loader` or `second_stage`.
    pub stage: &'static str,
    /// Its Authenticode SHA-256 (what PCR 4 records).
    pub sha256: String,
    /// Who verifies it and with what.
    pub verified_by: String,
}

/// A PCR 7 (and, when the kernel is known, PCR 4) prediction.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// Whether the store boots with Secure Boot on.
    pub secure_boot: bool,
    /// PCR 7 per bank (`sha1`, `sha256`, `sha384`), lower-case hex.
    pub pcr7: std::collections::BTreeMap<&'static str, String>,
    /// PCR 4 per bank, when the whole chain (shim, GRUB, kernel) is known; see
    /// [`predict_pcr4`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcr4: Option<std::collections::BTreeMap<&'static str, String>>,
    /// The stages verified.
    pub chain: Vec<Stage>,
    /// The events, in measurement order.
    pub events: Vec<Pcr7Event>,
}

fn predict_error(why: impl Into<String>) -> crate::Error {
    crate::Error::Predict(why.into())
}

/// Predicts PCR 7 for a VM with `store` booting `files`.
///
/// Modelled: edk2/OVMF's configuration events and the db authority of the first
/// stage; when that stage is shim (it carries `.vendor_cert`), shim 15.8+/16's
/// `SbatLevel` event (its "previous" level unless the store holds a newer one) and
/// the `MokListRT` authority of its vendor certificate when it verifies the second
/// stage. A kernel that the second stage has shim verify with the same vendor
/// certificate adds no PCR 7 event (shim measures each authority once). Not modelled
/// (refused with the reason): Secure Boot off with shim, a second stage that chains to
/// the firmware db or to a MOK, a store with `MokList` entries.
pub fn predict(
    store: &VariableStore,
    files: &crate::esp::BootFiles,
) -> Result<Prediction, crate::Error> {
    use crate::pe::PeImage;
    let mut events = configuration_events(store);
    let mut chain = Vec::new();
    let secure_boot = store.secure_boot();
    let shim = crate::shim::ShimTrust::parse(&files.loader).ok();
    let loader_sha =
        hex::encode(PeImage::parse(&files.loader)?.authenticode_digest(HashAlg::Sha256)?);
    if !secure_boot {
        if shim.is_some() {
            return Err(predict_error(
                "Secure Boot is off in this variable store; shim's PCR 7 events without Secure Boot are not modelled",
            ));
        }
        chain.push(Stage {
            stage: "loader",
            sha256: loader_sha,
            verified_by: "nothing (Secure Boot off)".into(),
        });
        return Ok(finish(secure_boot, chain, events));
    }
    let db = store.signature_db("db")?;
    let dbx = store.signature_db("dbx")?;
    let verdict = crate::verify::verify_image(&files.loader, &db, &dbx, None)?;
    let authority = verdict
        .result
        .map_err(|refusal| predict_error(format!("firmware refuses the boot loader: {refusal}")))?;
    let entry = &db.entries[authority.db_entry()];
    events.push(db_authority_event(entry));
    chain.push(Stage {
        stage: "loader",
        sha256: loader_sha,
        verified_by: match &authority {
            crate::verify::Authority::Certificate { subject, .. } => {
                format!("firmware, db certificate {subject:?}")
            }
            crate::verify::Authority::Hash { db_entry } => {
                format!("firmware, db hash entry {db_entry}")
            }
        },
    });
    let Some(shim) = shim else {
        return Ok(finish(secure_boot, chain, events));
    };
    if store
        .get("MokList", crate::varstore::SHIM_LOCK_GUID)
        .is_some()
    {
        return Err(predict_error(
            "the store holds a MokList; PCR 7 with MOKs is not modelled",
        ));
    }
    let level = sbat_level(store, &shim)?;
    let parsed_level = crate::sbat::Level::parse(&level)?;
    events.push(variable_event(
        EV_EFI_VARIABLE_AUTHORITY,
        crate::varstore::SHIM_LOCK_GUID,
        "SbatLevel",
        &level,
    ));
    let second = files.second_stage.as_deref().ok_or_else(|| {
        predict_error("the boot loader is shim but there is no grubx64.efi beside it")
    })?;
    // shim checks the firmware's dbx, then its vendor dbx, then the firmware's db, then
    // its vendor certificate.
    let firmware = crate::verify::verify_image(second, &db, &dbx, Some(&parsed_level))?;
    if let Err(
        crate::verify::Refusal::HashInDbx { .. } | crate::verify::Refusal::SignerInDbx { .. },
    ) = &firmware.result
    {
        return Err(predict_error(format!(
            "shim refuses grubx64.efi: {}",
            firmware
                .result
                .as_ref()
                .err()
                .map(|r| r.to_string())
                .unwrap_or_default()
        )));
    }
    if firmware.result.is_ok() {
        return Err(predict_error(
            "grubx64.efi chains to the firmware db; shim's events for that path are not modelled",
        ));
    }
    let vendor = crate::verify::verify_image(
        second,
        &shim.vendor_db,
        &shim.vendor_dbx,
        Some(&parsed_level),
    )?;
    let vendor_authority = vendor
        .result
        .map_err(|refusal| predict_error(format!("shim refuses grubx64.efi: {refusal}")))?;
    let vendor_entry = &shim.vendor_db.entries[vendor_authority.db_entry()];
    events.push(variable_event(
        EV_EFI_VARIABLE_AUTHORITY,
        crate::varstore::SHIM_LOCK_GUID,
        "MokListRT",
        &vendor_entry.signature_data(),
    ));
    chain.push(Stage {
        stage: "second_stage",
        sha256: vendor.sha256,
        verified_by: "shim, vendor certificate".into(),
    });
    Ok(finish(secure_boot, chain, events))
}

/// The SBAT level shim applies: the store's, unless shim's own "previous" level is
/// newer.
fn sbat_level(
    store: &VariableStore,
    shim: &crate::shim::ShimTrust,
) -> Result<Vec<u8>, crate::Error> {
    let (previous, _) = shim.level_strings.clone().ok_or_else(|| {
        predict_error("this shim has no .sbatlevel section (shim before 15.8 is not modelled)")
    })?;
    let stored = store
        .get("SbatLevel", crate::varstore::SHIM_LOCK_GUID)
        .map(|v| v.data.clone());
    Ok(match stored {
        Some(current) if datestamp(&current) >= datestamp(&previous) => current,
        _ => previous,
    })
}

/// shim's check of the kernel GRUB has it verify (shim_lock): refused when the
/// firmware's dbx or shim's vendor dbx lists it or its signer, or SBAT revokes it;
/// accepted when the firmware's db or shim's vendor certificate verifies it. Only for
/// a shim chain under Secure Boot (what [`predict`] accepts).
pub fn verify_kernel(
    store: &VariableStore,
    files: &crate::esp::BootFiles,
    kernel: &[u8],
) -> Result<Stage, crate::Error> {
    let shim = crate::shim::ShimTrust::parse(&files.loader)
        .map_err(|_| predict_error("the kernel is checked only for shim chains"))?;
    let level = crate::sbat::Level::parse(&sbat_level(store, &shim)?)?;
    let db = store.signature_db("db")?;
    let dbx = store.signature_db("dbx")?;
    let firmware = crate::verify::verify_image(kernel, &db, &dbx, Some(&level))?;
    let vendor =
        crate::verify::verify_image(kernel, &shim.vendor_db, &shim.vendor_dbx, Some(&level))?;
    let refused =
        |r: &crate::verify::Refusal| predict_error(format!("shim refuses the kernel: {r}"));
    // Every deny list (and SBAT) before any allow list, as shim checks.
    for verdict in [&firmware, &vendor] {
        if let Err(
            r @ (crate::verify::Refusal::HashInDbx { .. }
            | crate::verify::Refusal::SignerInDbx { .. }
            | crate::verify::Refusal::Sbat { .. }
            | crate::verify::Refusal::SbatMalformed { .. }),
        ) = &verdict.result
        {
            return Err(refused(r));
        }
    }
    match (&firmware.result, &vendor.result) {
        (Ok(_), _) => Ok(Stage {
            stage: "kernel",
            sha256: firmware.sha256,
            verified_by: "shim, firmware db".into(),
        }),
        (_, Ok(_)) => Ok(Stage {
            stage: "kernel",
            sha256: vendor.sha256,
            verified_by: "shim, vendor certificate".into(),
        }),
        (_, Err(r)) => Err(refused(r)),
    }
}

fn datestamp(level: &[u8]) -> String {
    crate::sbat::Level::parse(level)
        .map(|l| l.datestamp)
        .unwrap_or_default()
}

fn finish(secure_boot: bool, chain: Vec<Stage>, events: Vec<Pcr7Event>) -> Prediction {
    let pcr7 = [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha384]
        .into_iter()
        .map(|alg| (alg.name(), hex::encode(replay(&events, alg))))
        .collect();
    Prediction {
        secure_boot,
        pcr7,
        pcr4: None,
        chain,
        events,
    }
}

/// `EV_EFI_ACTION` text of the first boot attempt.
const CALLING: &[u8] = b"Calling EFI Application from Boot Option";
/// `EV_EFI_ACTION` text measured before each later attempt.
const RETURNING: &[u8] = b"Returning from EFI Application from Boot Option";

/// The digests (in `alg`) of the PCR 4 events of OVMF booting `loader` (shim) →
/// `second` (GRUB) → `kernel` after `failed_attempts`, in order ([`predict_pcr4`]
/// says which).
fn pcr4_digests(
    loader: &crate::pe::PeImage<'_>,
    second: &crate::pe::PeImage<'_>,
    kernel: &crate::pe::PeImage<'_>,
    failed_attempts: u32,
    alg: HashAlg,
) -> Result<Vec<Vec<u8>>, crate::Error> {
    let mut digests = vec![alg.digest(CALLING), alg.digest(&[0; 4])];
    for _ in 0..failed_attempts {
        digests.push(alg.digest(RETURNING));
        digests.push(alg.digest(CALLING));
    }
    let kernel_digest = kernel.authenticode_digest(alg)?;
    digests.push(loader.authenticode_digest(alg)?);
    digests.push(second.authenticode_digest(alg)?);
    digests.push(kernel_digest.clone());
    digests.push(kernel_digest);
    Ok(digests)
}

/// shim, GRUB and `kernel` as PE images: the chain PCR 4 is modelled for.
fn shim_chain<'a>(
    files: &'a crate::esp::BootFiles,
    kernel: &'a [u8],
) -> Result<
    (
        crate::pe::PeImage<'a>,
        crate::pe::PeImage<'a>,
        crate::pe::PeImage<'a>,
    ),
    crate::Error,
> {
    use crate::pe::PeImage;
    crate::shim::ShimTrust::parse(&files.loader)
        .map_err(|_| predict_error("PCR 4 is predicted only for shim chains"))?;
    let second = files
        .second_stage
        .as_deref()
        .ok_or_else(|| predict_error("PCR 4: no grubx64.efi beside shim"))?;
    Ok((
        PeImage::parse(&files.loader)?,
        PeImage::parse(second)?,
        PeImage::parse(kernel)?,
    ))
}

/// One measured event's digests: `(TPM_ALG_ID, digest)` per bank.
pub type EventDigests = Vec<(u16, Vec<u8>)>;

/// The PCR 4 events of OVMF booting shim → GRUB → `kernel` after `failed_attempts`
/// ([`predict_pcr4`]'s model), each as its SHA-1, SHA-256, SHA-384 and SHA-512
/// digests (TPM algorithm ids 0x0004, 0x000B, 0x000C, 0x000D), for extending every
/// bank of a TPM as firmware would.
pub fn pcr4_events(
    files: &crate::esp::BootFiles,
    kernel: &[u8],
    failed_attempts: u32,
) -> Result<Vec<EventDigests>, crate::Error> {
    let (loader, second, kernel) = shim_chain(files, kernel)?;
    let mut events: Vec<EventDigests> = Vec::new();
    for (id, alg) in [
        (0x0004, HashAlg::Sha1),
        (0x000B, HashAlg::Sha256),
        (0x000C, HashAlg::Sha384),
        (0x000D, HashAlg::Sha512),
    ] {
        for (i, d) in pcr4_digests(&loader, &second, &kernel, failed_attempts, alg)?
            .into_iter()
            .enumerate()
        {
            if events.len() <= i {
                events.push(Vec::new());
            }
            events[i].push((id, d));
        }
    }
    Ok(events)
}

/// Predicts PCR 4 for OVMF booting shim → GRUB → `kernel`, after `failed_attempts`
/// boot options that failed to load (QEMU's q35 machine without `-nodefaults` has a
/// CD-ROM drive OVMF tries first: one failed attempt).
///
/// The model, checked against QEMU boots of OVMF 2022.11 with Debian's shim 16.1 and
/// GRUB 2.06-13: "Calling EFI Application from Boot Option" and the separator at the
/// first attempt; "Returning from…" then "Calling…" at each later one; then the
/// Authenticode digests of shim, GRUB, and the kernel twice (shim measures it when
/// GRUB has it verified through shim_lock, and again when GRUB loads it through shim's
/// loader). Other chains are not modelled.
pub fn predict_pcr4(
    files: &crate::esp::BootFiles,
    kernel: &[u8],
    failed_attempts: u32,
) -> Result<std::collections::BTreeMap<&'static str, String>, crate::Error> {
    let (loader, second, kernel) = shim_chain(files, kernel)?;
    let mut out = std::collections::BTreeMap::new();
    for alg in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha384] {
        let digests = pcr4_digests(&loader, &second, &kernel, failed_attempts, alg)?;
        let mut pcr = vec![0u8; alg.digest_len()];
        for d in digests {
            pcr.extend_from_slice(&d);
            pcr = alg.digest(&pcr);
        }
        out.insert(alg.name(), hex::encode(pcr));
    }
    Ok(out)
}
