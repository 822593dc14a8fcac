//! Regions. Which regions offer confidential VMs is a fact about their hosts (a region
//! has SNP capacity when it has an SNP-capable host); this list is the default set a
//! fresh platform knows, replaceable by the operator.
//!
//! Azure stopped listing its confidential-VM regions in 2022. The SNP regions here are
//! the ones Edgeless Constellation replicates its Azure SEV-SNP images to
//! (`edgelesssys/constellation:internal/osimage/uplosi/uplosiupload.go`, snapshot of
//! 2026-01-22); `australiaeast` is listed without SNP hosts, as Constellation reported
//! no confidential VMs in Australian regions (edgelesssys/constellation issue #3668).

/// A region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// Azure's name, `eastus`.
    pub name: String,
    /// Whether the default catalog expects SNP-capable hosts there.
    pub snp: bool,
}

/// The default regions: seven with SNP hosts, one without.
pub fn defaults() -> Vec<Region> {
    const SNP: [&str; 7] = [
        "westus",
        "eastus",
        "eastus2",
        "northeurope",
        "westeurope",
        "germanywestcentral",
        "southeastasia",
    ];
    let mut all: Vec<Region> = SNP
        .iter()
        .map(|n| Region {
            name: (*n).to_string(),
            snp: true,
        })
        .collect();
    all.push(Region {
        name: "australiaeast".to_string(),
        snp: false,
    });
    all
}

/// Whether `name` is a well-formed region name: 1 to 40 lowercase ASCII letters and
/// digits, starting with a letter (Azure's region names).
pub fn valid_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_well_formed_and_one_has_no_snp() {
        let d = defaults();
        assert!(d.iter().all(|r| valid_name(&r.name)));
        assert_eq!(d.iter().filter(|r| !r.snp).count(), 1);
        assert!(!valid_name("East US"));
        assert!(!valid_name(""));
        assert!(!valid_name("1east"));
    }
}
