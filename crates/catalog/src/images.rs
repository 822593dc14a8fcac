//! The OS image catalog. An entry names an OS and the Secure Boot template its VMs
//! get; its disk artifact is not part of the catalog: an operator imports one
//! (`cvm image import`), or the platform builds Debian 12's from Debian's signed boot
//! packages. A VM from an entry without an artifact is refused.
//!
//! Entries are the images Azure supported for confidential VMs in its preview
//! (`azure-docs:articles/confidential-computing/confidential-vm-overview.md`, 2021-11:
//! Ubuntu 20.04, Windows Server 2019 and 2022) with their Marketplace URNs, and Debian
//! 12, which opencvm builds itself.

/// An image's operating system family (prices differ: Windows carries a licence).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OsType {
    /// Linux.
    Linux,
    /// Windows.
    Windows,
}

impl OsType {
    /// `linux` or `windows`.
    pub fn name(self) -> &'static str {
        match self {
            OsType::Linux => "linux",
            OsType::Windows => "windows",
        }
    }
}

/// A catalog entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Image {
    /// The id a request names (`debian-12`).
    pub id: &'static str,
    /// A human name.
    pub title: &'static str,
    /// Its OS family.
    pub os: OsType,
    /// The Secure Boot template its VMs get (`boot::template`'s names): `microsoft`
    /// for Windows (the Windows PCA in db), `linux` for shim-booted Linux (the
    /// Microsoft UEFI CAs only).
    pub secure_boot_template: &'static str,
    /// The Azure Marketplace URN of the same OS's confidential image, if there is one.
    pub azure_urn: Option<&'static str>,
    /// Whether the platform can build the artifact itself (`cvm image build`).
    pub buildable: bool,
}

/// Every catalog entry.
pub const ALL: &[Image] = &[
    Image {
        id: "debian-12",
        title: "Debian 12 (bookworm), built from Debian's signed shim, GRUB and kernel",
        os: OsType::Linux,
        secure_boot_template: "linux",
        azure_urn: None,
        buildable: true,
    },
    Image {
        id: "ubuntu-20.04",
        title: "Ubuntu 20.04 LTS",
        os: OsType::Linux,
        secure_boot_template: "linux",
        azure_urn: Some("Canonical:0001-com-ubuntu-confidential-vm-focal:20_04-lts-cvm:latest"),
        buildable: false,
    },
    Image {
        id: "windows-server-2019",
        title: "Windows Server 2019 Datacenter",
        os: OsType::Windows,
        secure_boot_template: "microsoft",
        azure_urn: None,
        buildable: false,
    },
    Image {
        id: "windows-server-2022",
        title: "Windows Server 2022 Datacenter",
        os: OsType::Windows,
        secure_boot_template: "microsoft",
        azure_urn: Some("MicrosoftWindowsServer:windows-cvm:2022-datacenter-cvm:latest"),
        buildable: false,
    },
];

/// The entry whose id or Azure URN is `name` (case-insensitive, as Azure's URNs are).
pub fn find(name: &str) -> Option<&'static Image> {
    ALL.iter().find(|i| {
        i.id.eq_ignore_ascii_case(name) || i.azure_urn.is_some_and(|u| u.eq_ignore_ascii_case(name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_by_id_and_urn() {
        assert_eq!(find("Debian-12").unwrap().id, "debian-12");
        assert_eq!(
            find("canonical:0001-com-ubuntu-confidential-vm-focal:20_04-lts-cvm:latest")
                .unwrap()
                .id,
            "ubuntu-20.04"
        );
        assert!(find("rhel-9").is_none());
        assert!(
            ALL.iter()
                .all(|i| matches!(i.secure_boot_template, "linux" | "microsoft"))
        );
        assert_eq!(ALL.iter().filter(|i| i.buildable).count(), 1);
    }
}
