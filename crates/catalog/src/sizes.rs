//! The confidential VM sizes: Azure's AMD SEV-SNP v5 series.
//!
//! Figures from Azure's size pages (MicrosoftDocs/azure-compute-docs,
//! `articles/virtual-machines/sizes/general-purpose/dcasv5-series.md`,
//! `dcadsv5-series.md` and `sizes/memory-optimized/ecasv5-ecadsv5-series.md`, the
//! DCasv5 page dated 2026-03-10). The isolated `Standard_EC96ias_v5` and
//! `Standard_EC96iads_v5` are on Azure's isolation page
//! (`articles/virtual-machines/isolation.md`) but not in the size tables; their disk
//! and NIC limits are taken to be those of EC96as/EC96ads. There is no 128-vCPU AMD
//! size: `EC128es_v5` is Intel TDX and not offered here.

/// A size series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Series {
    /// General purpose, 4 GiB per vCPU, no temporary disk.
    DCasv5,
    /// General purpose with a local temporary disk.
    DCadsv5,
    /// Memory optimised, 8 GiB per vCPU (672 GiB at 96), no temporary disk.
    ECasv5,
    /// Memory optimised with a local temporary disk.
    ECadsv5,
}

impl Series {
    /// Azure's name of the series.
    pub fn name(self) -> &'static str {
        match self {
            Series::DCasv5 => "DCasv5",
            Series::DCadsv5 => "DCadsv5",
            Series::ECasv5 => "ECasv5",
            Series::ECadsv5 => "ECadsv5",
        }
    }

    /// Every series.
    pub const ALL: [Series; 4] = [
        Series::DCasv5,
        Series::DCadsv5,
        Series::ECasv5,
        Series::ECadsv5,
    ];
}

/// One VM size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Azure's name, `Standard_DC2as_v5`.
    pub name: &'static str,
    /// Its series.
    pub series: Series,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in GiB.
    pub memory_gib: u32,
    /// Local temporary disk in GiB (the `d` series).
    pub temp_disk_gib: Option<u32>,
    /// Most remote data disks.
    pub max_data_disks: u32,
    /// Most network interfaces.
    pub max_nics: u32,
    /// Expected network bandwidth, Mbps.
    pub network_mbps: u32,
    /// Isolated: the size takes a whole host for one customer.
    pub isolated: bool,
}

impl Size {
    /// Memory in MiB.
    pub fn memory_mib(&self) -> u64 {
        u64::from(self.memory_gib) * 1024
    }
}

macro_rules! sizes {
    ($($name:literal $series:ident $vcpus:literal $mem:literal $temp:tt $disks:literal $nics:literal $net:literal $iso:literal;)*) => {
        /// Every size, by series and then by vCPUs.
        pub const ALL: &[Size] = &[$(Size {
            name: $name,
            series: Series::$series,
            vcpus: $vcpus,
            memory_gib: $mem,
            temp_disk_gib: sizes!(@temp $temp),
            max_data_disks: $disks,
            max_nics: $nics,
            network_mbps: $net,
            isolated: $iso,
        }),*];
    };
    (@temp -) => { None };
    (@temp $t:literal) => { Some($t) };
}

sizes! {
    "Standard_DC2as_v5" DCasv5 2 8 - 4 2 3000 false;
    "Standard_DC4as_v5" DCasv5 4 16 - 8 2 5000 false;
    "Standard_DC8as_v5" DCasv5 8 32 - 16 4 5000 false;
    "Standard_DC16as_v5" DCasv5 16 64 - 32 4 10000 false;
    "Standard_DC32as_v5" DCasv5 32 128 - 32 8 12500 false;
    "Standard_DC48as_v5" DCasv5 48 192 - 32 8 15000 false;
    "Standard_DC64as_v5" DCasv5 64 256 - 32 8 20000 false;
    "Standard_DC96as_v5" DCasv5 96 384 - 32 8 20000 false;
    "Standard_DC2ads_v5" DCadsv5 2 8 75 4 2 3000 false;
    "Standard_DC4ads_v5" DCadsv5 4 16 150 8 2 5000 false;
    "Standard_DC8ads_v5" DCadsv5 8 32 300 16 4 5000 false;
    "Standard_DC16ads_v5" DCadsv5 16 64 600 32 4 10000 false;
    "Standard_DC32ads_v5" DCadsv5 32 128 1200 32 8 12500 false;
    "Standard_DC48ads_v5" DCadsv5 48 192 1800 32 8 15000 false;
    "Standard_DC64ads_v5" DCadsv5 64 256 2400 32 8 20000 false;
    "Standard_DC96ads_v5" DCadsv5 96 384 3600 32 8 20000 false;
    "Standard_EC2as_v5" ECasv5 2 16 - 4 2 3000 false;
    "Standard_EC4as_v5" ECasv5 4 32 - 8 2 5000 false;
    "Standard_EC8as_v5" ECasv5 8 64 - 16 4 5000 false;
    "Standard_EC16as_v5" ECasv5 16 128 - 32 4 10000 false;
    "Standard_EC20as_v5" ECasv5 20 160 - 32 8 10000 false;
    "Standard_EC32as_v5" ECasv5 32 256 - 32 8 12500 false;
    "Standard_EC48as_v5" ECasv5 48 384 - 32 8 15000 false;
    "Standard_EC64as_v5" ECasv5 64 512 - 32 8 20000 false;
    "Standard_EC96as_v5" ECasv5 96 672 - 32 8 20000 false;
    "Standard_EC96ias_v5" ECasv5 96 672 - 32 8 20000 true;
    "Standard_EC2ads_v5" ECadsv5 2 16 75 4 2 3000 false;
    "Standard_EC4ads_v5" ECadsv5 4 32 150 8 2 5000 false;
    "Standard_EC8ads_v5" ECadsv5 8 64 300 16 4 5000 false;
    "Standard_EC16ads_v5" ECadsv5 16 128 600 32 4 10000 false;
    "Standard_EC20ads_v5" ECadsv5 20 160 750 32 8 10000 false;
    "Standard_EC32ads_v5" ECadsv5 32 256 1200 32 8 12500 false;
    "Standard_EC48ads_v5" ECadsv5 48 384 1800 32 8 15000 false;
    "Standard_EC64ads_v5" ECadsv5 64 512 2400 32 8 20000 false;
    "Standard_EC96ads_v5" ECadsv5 96 672 3600 32 8 20000 false;
    "Standard_EC96iads_v5" ECadsv5 96 672 3600 32 8 20000 true;
}

/// The size named `name`; Azure's names are matched without regard to case, as ARM
/// does (`standard_dc2as_v5` is `Standard_DC2as_v5`).
pub fn find(name: &str) -> Option<&'static Size> {
    ALL.iter().find(|s| s.name.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_has_every_published_size_and_the_two_isolated_ones() {
        let count = |s: Series| ALL.iter().filter(|z| z.series == s && !z.isolated).count();
        assert_eq!(count(Series::DCasv5), 8);
        assert_eq!(count(Series::DCadsv5), 8);
        assert_eq!(count(Series::ECasv5), 9);
        assert_eq!(count(Series::ECadsv5), 9);
        assert_eq!(ALL.iter().filter(|z| z.isolated).count(), 2);
        let mut names: Vec<_> = ALL.iter().map(|s| s.name.to_ascii_lowercase()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 36, "names are unique");
    }

    #[test]
    fn figures_follow_the_series_rules() {
        for s in ALL {
            let per_vcpu = match s.series {
                Series::DCasv5 | Series::DCadsv5 => 4,
                Series::ECasv5 | Series::ECadsv5 => 8,
            };
            // EC96: 672 GiB, not 768.
            let expected = if s.vcpus == 96 && per_vcpu == 8 {
                672
            } else {
                s.vcpus * per_vcpu
            };
            assert_eq!(s.memory_gib, expected, "{}", s.name);
            let has_d = matches!(s.series, Series::DCadsv5 | Series::ECadsv5);
            assert_eq!(s.temp_disk_gib.is_some(), has_d, "{}", s.name);
            assert_eq!(s.name.contains("ds_v5"), has_d, "{}", s.name);
            assert!((2..=96).contains(&s.vcpus));
        }
        // Spot checks against the size pages.
        let ec20 = find("Standard_EC20ads_v5").unwrap();
        assert_eq!((ec20.memory_gib, ec20.temp_disk_gib), (160, Some(750)));
        // The size page's 256 GiB, not AKS metadata's 192.
        assert_eq!(find("standard_ec32as_v5").unwrap().memory_gib, 256);
        assert!(find("Standard_EC128es_v5").is_none(), "Intel TDX, not SNP");
        assert!(find("Standard_D2as_v5").is_none(), "not confidential");
    }
}
