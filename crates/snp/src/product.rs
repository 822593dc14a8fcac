//! AMD EPYC product generations that implement SEV-SNP, and how to tell them apart.
//!
//! The product decides the layout of every `TCB_VERSION` in a report and which AMD
//! root key signs the chain. It comes from one of two sources, never from a guess:
//! the CPUID family/model fields of a version 3+ report, or the `productName`
//! extension of the VCEK/VLEK certificate.

use std::fmt;
use std::str::FromStr;

use crate::tcb::TcbLayout;

/// An AMD EPYC generation with SEV-SNP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Product {
    /// 3rd generation EPYC (Zen 3, family 19h models 00h–0Fh).
    Milan,
    /// 4th generation EPYC (Zen 4, family 19h models 10h–1Fh and A0h–AFh).
    Genoa,
    /// 5th generation EPYC (Zen 5, family 1Ah models 00h–1Fh).
    Turin,
}

impl Product {
    /// All products, oldest first.
    pub const ALL: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];

    /// The name AMD uses in KDS URLs and certificate names (`Milan`, `Genoa`, `Turin`).
    pub fn name(self) -> &'static str {
        match self {
            Product::Milan => "Milan",
            Product::Genoa => "Genoa",
            Product::Turin => "Turin",
        }
    }

    /// The product of a CPU identified by its CPUID family and model, as a version 3+
    /// report carries them. `None` for a CPU that has no known SEV-SNP product.
    pub fn from_cpuid(family: u8, model: u8) -> Option<Product> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Product::Milan),
            (0x19, 0x10..=0x1F) | (0x19, 0xA0..=0xAF) => Some(Product::Genoa),
            (0x1A, 0x00..=0x1F) => Some(Product::Turin),
            _ => None,
        }
    }

    /// The product named by a VEK certificate's `productName` extension, such as
    /// `Milan-B0` or `Genoa`: the part before an optional `-stepping` suffix.
    pub fn from_vek_product_name(name: &str) -> Option<Product> {
        let base = name.split_once('-').map_or(name, |(base, _)| base);
        Product::from_str(base).ok()
    }

    /// The layout of this product's `TCB_VERSION` values.
    pub fn tcb_layout(self) -> TcbLayout {
        match self {
            Product::Milan | Product::Genoa => TcbLayout::MilanGenoa,
            Product::Turin => TcbLayout::Turin,
        }
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error for a product name that is not Milan, Genoa or Turin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown SEV-SNP product {0:?} (expected Milan, Genoa or Turin)")]
pub struct UnknownProduct(pub String);

impl FromStr for Product {
    type Err = UnknownProduct;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Product::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownProduct(s.to_owned()))
    }
}

impl serde::Serialize for Product {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Product {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuid_ranges() {
        assert_eq!(Product::from_cpuid(0x19, 0x01), Some(Product::Milan));
        assert_eq!(Product::from_cpuid(0x19, 0x11), Some(Product::Genoa));
        assert_eq!(Product::from_cpuid(0x19, 0xA0), Some(Product::Genoa));
        assert_eq!(Product::from_cpuid(0x1A, 0x02), Some(Product::Turin));
        assert_eq!(Product::from_cpuid(0x17, 0x31), None);
        assert_eq!(Product::from_cpuid(0x19, 0x50), None);
    }

    #[test]
    fn vek_names() {
        assert_eq!(
            Product::from_vek_product_name("Milan-B0"),
            Some(Product::Milan)
        );
        assert_eq!(
            Product::from_vek_product_name("Genoa"),
            Some(Product::Genoa)
        );
        assert_eq!(
            Product::from_vek_product_name("Turin"),
            Some(Product::Turin)
        );
        assert_eq!(Product::from_vek_product_name("Rome"), None);
        assert_eq!(Product::from_vek_product_name(""), None);
    }
}
