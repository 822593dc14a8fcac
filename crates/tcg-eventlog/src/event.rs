//! Event types (TCG PC Client Platform Firmware Profile, "Events") and parsed events.

use std::fmt;

use tpm_quote::HashAlg;

/// Defines [`EventType`] with its value and spec name in one table.
macro_rules! event_types {
    ($($(#[$doc:meta])* $variant:ident = $value:literal, $name:literal;)*) => {
        /// A PC Client event type (`eventType` of `TCG_PCR_EVENT` / `TCG_PCR_EVENT2`).
        ///
        /// Converting with [`EventType::from`] never yields `Other(v)` for a value `v`
        /// that has a named variant; build values that way rather than by hand.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum EventType {
            $($(#[$doc])* $variant,)*
            /// A value without a named variant here.
            Other(u32),
        }

        impl EventType {
            /// The numeric `eventType`.
            pub fn value(self) -> u32 {
                match self {
                    $(Self::$variant => $value,)*
                    Self::Other(v) => v,
                }
            }

            /// The name in the specification (e.g. `"EV_EFI_ACTION"`), `"EV_UNKNOWN"` for
            /// [`EventType::Other`].
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                    Self::Other(_) => "EV_UNKNOWN",
                }
            }
        }

        impl From<u32> for EventType {
            fn from(value: u32) -> Self {
                match value {
                    $($value => Self::$variant,)*
                    v => Self::Other(v),
                }
            }
        }
    };
}

event_types! {
    /// `EV_PREBOOT_CERT` (0x0).
    PrebootCert = 0x0000_0000, "EV_PREBOOT_CERT";
    /// `EV_POST_CODE` (0x1).
    PostCode = 0x0000_0001, "EV_POST_CODE";
    /// `EV_NO_ACTION` (0x3): informational, never extended into a PCR.
    NoAction = 0x0000_0003, "EV_NO_ACTION";
    /// `EV_SEPARATOR` (0x4).
    Separator = 0x0000_0004, "EV_SEPARATOR";
    /// `EV_ACTION` (0x5).
    Action = 0x0000_0005, "EV_ACTION";
    /// `EV_EVENT_TAG` (0x6).
    EventTag = 0x0000_0006, "EV_EVENT_TAG";
    /// `EV_S_CRTM_CONTENTS` (0x7).
    SCrtmContents = 0x0000_0007, "EV_S_CRTM_CONTENTS";
    /// `EV_S_CRTM_VERSION` (0x8).
    SCrtmVersion = 0x0000_0008, "EV_S_CRTM_VERSION";
    /// `EV_CPU_MICROCODE` (0x9).
    CpuMicrocode = 0x0000_0009, "EV_CPU_MICROCODE";
    /// `EV_PLATFORM_CONFIG_FLAGS` (0xA).
    PlatformConfigFlags = 0x0000_000A, "EV_PLATFORM_CONFIG_FLAGS";
    /// `EV_TABLE_OF_DEVICES` (0xB).
    TableOfDevices = 0x0000_000B, "EV_TABLE_OF_DEVICES";
    /// `EV_COMPACT_HASH` (0xC).
    CompactHash = 0x0000_000C, "EV_COMPACT_HASH";
    /// `EV_IPL` (0xD).
    Ipl = 0x0000_000D, "EV_IPL";
    /// `EV_IPL_PARTITION_DATA` (0xE).
    IplPartitionData = 0x0000_000E, "EV_IPL_PARTITION_DATA";
    /// `EV_NONHOST_CODE` (0xF).
    NonhostCode = 0x0000_000F, "EV_NONHOST_CODE";
    /// `EV_NONHOST_CONFIG` (0x10).
    NonhostConfig = 0x0000_0010, "EV_NONHOST_CONFIG";
    /// `EV_NONHOST_INFO` (0x11).
    NonhostInfo = 0x0000_0011, "EV_NONHOST_INFO";
    /// `EV_OMIT_BOOT_DEVICE_EVENTS` (0x12).
    OmitBootDeviceEvents = 0x0000_0012, "EV_OMIT_BOOT_DEVICE_EVENTS";
    /// `EV_EFI_VARIABLE_DRIVER_CONFIG` (0x80000001).
    EfiVariableDriverConfig = 0x8000_0001, "EV_EFI_VARIABLE_DRIVER_CONFIG";
    /// `EV_EFI_VARIABLE_BOOT` (0x80000002).
    EfiVariableBoot = 0x8000_0002, "EV_EFI_VARIABLE_BOOT";
    /// `EV_EFI_BOOT_SERVICES_APPLICATION` (0x80000003).
    EfiBootServicesApplication = 0x8000_0003, "EV_EFI_BOOT_SERVICES_APPLICATION";
    /// `EV_EFI_BOOT_SERVICES_DRIVER` (0x80000004).
    EfiBootServicesDriver = 0x8000_0004, "EV_EFI_BOOT_SERVICES_DRIVER";
    /// `EV_EFI_RUNTIME_SERVICES_DRIVER` (0x80000005).
    EfiRuntimeServicesDriver = 0x8000_0005, "EV_EFI_RUNTIME_SERVICES_DRIVER";
    /// `EV_EFI_GPT_EVENT` (0x80000006).
    EfiGptEvent = 0x8000_0006, "EV_EFI_GPT_EVENT";
    /// `EV_EFI_ACTION` (0x80000007).
    EfiAction = 0x8000_0007, "EV_EFI_ACTION";
    /// `EV_EFI_PLATFORM_FIRMWARE_BLOB` (0x80000008).
    EfiPlatformFirmwareBlob = 0x8000_0008, "EV_EFI_PLATFORM_FIRMWARE_BLOB";
    /// `EV_EFI_HANDOFF_TABLES` (0x80000009).
    EfiHandoffTables = 0x8000_0009, "EV_EFI_HANDOFF_TABLES";
    /// `EV_EFI_PLATFORM_FIRMWARE_BLOB2` (0x8000000A).
    EfiPlatformFirmwareBlob2 = 0x8000_000A, "EV_EFI_PLATFORM_FIRMWARE_BLOB2";
    /// `EV_EFI_HANDOFF_TABLES2` (0x8000000B).
    EfiHandoffTables2 = 0x8000_000B, "EV_EFI_HANDOFF_TABLES2";
    /// `EV_EFI_VARIABLE_BOOT2` (0x8000000C).
    EfiVariableBoot2 = 0x8000_000C, "EV_EFI_VARIABLE_BOOT2";
    /// `EV_EFI_HCRTM_EVENT` (0x80000010).
    EfiHcrtmEvent = 0x8000_0010, "EV_EFI_HCRTM_EVENT";
    /// `EV_EFI_VARIABLE_AUTHORITY` (0x800000E0).
    EfiVariableAuthority = 0x8000_00E0, "EV_EFI_VARIABLE_AUTHORITY";
    /// `EV_EFI_SPDM_FIRMWARE_BLOB` (0x800000E1).
    EfiSpdmFirmwareBlob = 0x8000_00E1, "EV_EFI_SPDM_FIRMWARE_BLOB";
    /// `EV_EFI_SPDM_FIRMWARE_CONFIG` (0x800000E2).
    EfiSpdmFirmwareConfig = 0x8000_00E2, "EV_EFI_SPDM_FIRMWARE_CONFIG";
}

impl From<EventType> for u32 {
    fn from(t: EventType) -> u32 {
        t.value()
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(v) => write!(f, "EV_UNKNOWN(0x{v:08x})"),
            t => f.write_str(t.name()),
        }
    }
}

/// One event of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the log, 0 for the first event (the header event in logs that have
    /// one).
    pub index: u32,
    /// PCR the event was measured into (`pcrIndex`), at most [`crate::MAX_PCR`].
    pub pcr: u32,
    /// `eventType`.
    pub event_type: EventType,
    /// The digests of the algorithms this crate knows, in log order. Digests of
    /// algorithms that are declared in the header but unknown here are skipped.
    pub digests: Vec<(HashAlg, Vec<u8>)>,
    /// The event data (`event`), uninterpreted.
    pub data: Vec<u8>,
}

impl Event {
    /// The digest of algorithm `alg`, if the event carries one.
    pub fn digest(&self, alg: HashAlg) -> Option<&[u8]> {
        self.digests
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, d)| d.as_slice())
    }

    /// Whether the event is extended into its PCR: every event except `EV_NO_ACTION`.
    pub fn is_extended(&self) -> bool {
        self.event_type != EventType::NoAction
    }

    /// Whether the event carries at least one digest and every digest is the hash of
    /// [`Event::data`].
    ///
    /// For many event types (`EV_SEPARATOR`, `EV_EFI_ACTION`,
    /// `EV_EFI_VARIABLE_DRIVER_CONFIG`, ...) the specification defines the digest as
    /// the hash of the event data; only then can the data be trusted once the PCRs
    /// are. For others (e.g. `EV_EFI_BOOT_SERVICES_APPLICATION`, whose digest is the
    /// Authenticode hash of the image) this is normally false.
    pub fn digests_match_data(&self) -> bool {
        !self.digests.is_empty()
            && self
                .digests
                .iter()
                .all(|(alg, digest)| alg.digest(&self.data) == *digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_names_round_trip() {
        for v in (0u32..0x20).chain(0x8000_0000..0x8000_0020).chain([
            0x8000_00E0,
            0x8000_00E1,
            0x8000_00E2,
            0x8000_00E3,
            u32::MAX,
        ]) {
            let t = EventType::from(v);
            assert_eq!(t.value(), v);
            assert_eq!(u32::from(t), v);
            assert_eq!(matches!(t, EventType::Other(_)), t.name() == "EV_UNKNOWN");
        }
        assert_eq!(EventType::from(3), EventType::NoAction);
        assert_eq!(EventType::from(2), EventType::Other(2));
        assert_eq!(
            EventType::from(0x8000_00E0).name(),
            "EV_EFI_VARIABLE_AUTHORITY"
        );
        assert_eq!(EventType::from(0x8000_0010).name(), "EV_EFI_HCRTM_EVENT");
        assert_eq!(EventType::from(0x12).name(), "EV_OMIT_BOOT_DEVICE_EVENTS");
        assert_eq!(EventType::Other(0x42).to_string(), "EV_UNKNOWN(0x00000042)");
        assert_eq!(EventType::Separator.to_string(), "EV_SEPARATOR");
    }

    #[test]
    fn digest_helpers() {
        let data = vec![0u8; 4];
        let mut e = Event {
            index: 1,
            pcr: 0,
            event_type: EventType::Separator,
            digests: vec![
                (HashAlg::Sha1, HashAlg::Sha1.digest(&data)),
                (HashAlg::Sha256, HashAlg::Sha256.digest(&data)),
            ],
            data,
        };
        assert!(e.is_extended());
        assert!(e.digests_match_data());
        assert_eq!(e.digest(HashAlg::Sha384), None);
        assert_eq!(e.digest(HashAlg::Sha1).map(<[u8]>::len), Some(20));
        e.digests[1].1[0] ^= 1;
        assert!(!e.digests_match_data());
        e.digests.clear();
        assert!(!e.digests_match_data());
        e.event_type = EventType::NoAction;
        assert!(!e.is_extended());
    }
}
