//! The price table and quotes.
//!
//! A table is TOML (`prices.toml` in this crate is the default, with the date and
//! source of every figure; most are estimates and say so). Amounts are kept as whole
//! millionths of the currency unit, so a quote adds up exactly; a quote lists each
//! line with the table row it came from.

use std::collections::HashMap;

use serde::Deserialize;

use crate::images::OsType;
use crate::sizes::{Series, Size};

/// The default table's text.
pub const DEFAULT_TABLE: &str = include_str!("../prices.toml");

/// An amount in millionths of the table's currency unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Micros(pub u64);

impl Micros {
    /// The amount in currency units (for display and JSON).
    pub fn units(self) -> f64 {
        self.0 as f64 / 1e6
    }

    fn mul_div(self, mul: u64, div: u64) -> Micros {
        let v = u128::from(self.0) * u128::from(mul) / u128::from(div.max(1));
        Micros(u64::try_from(v).unwrap_or(u64::MAX))
    }
}

impl std::fmt::Display for Micros {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:06}", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// Why a price table was refused.
#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    /// Not TOML, or not a price table's shape.
    #[error("price table: {0}")]
    Syntax(#[from] toml::de::Error),
    /// A figure or name out of range.
    #[error("price table: {what}: {why}")]
    Invalid {
        /// Which row or field.
        what: String,
        /// What is wrong with it.
        why: String,
    },
}

fn invalid(what: impl Into<String>, why: impl Into<String>) -> PriceError {
    PriceError::Invalid {
        what: what.into(),
        why: why.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    currency: String,
    hours_per_month: u32,
    vmgs: RawFlat,
    encrypted_os_disk: RawPerGib,
    compute: Vec<RawCompute>,
    windows: RawRate,
    #[serde(default)]
    region: Vec<RawRegion>,
    #[serde(default)]
    size: Vec<RawSize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlat {
    usd_per_month: f64,
    as_of: String,
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPerGib {
    usd_per_gib_month: f64,
    as_of: String,
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompute {
    series: String,
    os: String,
    usd_per_vcpu_hour: f64,
    as_of: String,
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    usd_per_vcpu_hour: f64,
    as_of: String,
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: String,
    factor: f64,
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSize {
    name: String,
    region: String,
    os: String,
    usd_per_hour: f64,
    as_of: String,
    source: String,
}

/// Where a figure came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provenance {
    /// When it was captured (as the table says).
    pub as_of: String,
    /// Its source, or `estimate: ...`.
    pub source: String,
}

/// A checked price table.
#[derive(Clone, Debug)]
pub struct PriceTable {
    currency: String,
    hours_per_month: u32,
    vmgs: (Micros, Provenance),
    encrypted_per_gib: (Micros, Provenance),
    compute: HashMap<(Series, OsKey), (Micros, Provenance)>,
    windows: (Micros, Provenance),
    region: HashMap<String, (u64, Provenance)>,
    size: HashMap<(String, String, OsKey), (Micros, Provenance)>,
}

type OsKey = &'static str;

/// The largest amount a row may carry (per hour, month or GiB): a million units.
const MAX_AMOUNT: f64 = 1e6;

fn money(what: &str, v: f64) -> Result<Micros, PriceError> {
    if !v.is_finite() || !(0.0..=MAX_AMOUNT).contains(&v) {
        return Err(invalid(
            what,
            format!("{v} is not an amount between 0 and {MAX_AMOUNT}"),
        ));
    }
    Ok(Micros((v * 1e6).round() as u64))
}

fn provenance(what: &str, as_of: String, source: String) -> Result<Provenance, PriceError> {
    if as_of.trim().is_empty() || source.trim().is_empty() {
        return Err(invalid(
            what,
            "every figure needs its as_of date and source",
        ));
    }
    Ok(Provenance { as_of, source })
}

fn os_key(what: &str, os: &str) -> Result<OsKey, PriceError> {
    match os {
        "linux" => Ok("linux"),
        "windows" => Ok("windows"),
        other => Err(invalid(
            what,
            format!("os {other:?} is neither linux nor windows"),
        )),
    }
}

impl PriceTable {
    /// The built-in table ([`DEFAULT_TABLE`]).
    pub fn default_table() -> PriceTable {
        // The built-in table is checked by this crate's tests; should it ever fail to
        // parse, an empty-rate table would misprice silently, so fail loudly instead.
        #[allow(clippy::expect_used)]
        PriceTable::parse(DEFAULT_TABLE).expect("the built-in price table parses")
    }

    /// Parses and checks a table: amounts finite, non-negative and bounded; series,
    /// OS and size names known; every row dated and sourced; no row twice; a compute
    /// rate for every series on Linux.
    pub fn parse(text: &str) -> Result<PriceTable, PriceError> {
        let raw: RawTable = toml::from_str(text)?;
        if raw.currency.len() != 3 || !raw.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(invalid("currency", "an ISO 4217 code such as USD"));
        }
        if !(1..=744).contains(&raw.hours_per_month) {
            return Err(invalid("hours_per_month", "between 1 and 744"));
        }
        let vmgs = (
            money("vmgs", raw.vmgs.usd_per_month)?,
            provenance("vmgs", raw.vmgs.as_of, raw.vmgs.source)?,
        );
        let enc = raw.encrypted_os_disk;
        let encrypted_per_gib = (
            money("encrypted_os_disk", enc.usd_per_gib_month)?,
            provenance("encrypted_os_disk", enc.as_of, enc.source)?,
        );
        let mut compute = HashMap::new();
        for c in raw.compute {
            let what = format!("compute {}/{}", c.series, c.os);
            let series = Series::ALL
                .into_iter()
                .find(|s| s.name() == c.series)
                .ok_or_else(|| invalid(&what, "unknown series"))?;
            let os = os_key(&what, &c.os)?;
            let row = (
                money(&what, c.usd_per_vcpu_hour)?,
                provenance(&what, c.as_of, c.source)?,
            );
            if compute.insert((series, os), row).is_some() {
                return Err(invalid(what, "listed twice"));
            }
        }
        for s in Series::ALL {
            if !compute.contains_key(&(s, "linux")) {
                return Err(invalid(format!("compute {}/linux", s.name()), "missing"));
            }
        }
        let windows = (
            money("windows", raw.windows.usd_per_vcpu_hour)?,
            provenance("windows", raw.windows.as_of, raw.windows.source)?,
        );
        let mut region = HashMap::new();
        for r in raw.region {
            let what = format!("region {}", r.name);
            if !crate::regions::valid_name(&r.name) {
                return Err(invalid(what, "not a region name"));
            }
            if !r.factor.is_finite() || !(0.01..=100.0).contains(&r.factor) {
                return Err(invalid(what, "factor between 0.01 and 100"));
            }
            let p = provenance(&what, "-".into(), r.source)?;
            // The factor in millionths.
            let f = (r.factor * 1e6).round() as u64;
            if region.insert(r.name, (f, p)).is_some() {
                return Err(invalid(what, "listed twice"));
            }
        }
        let mut size = HashMap::new();
        for s in raw.size {
            let what = format!("size {}/{}/{}", s.name, s.region, s.os);
            let known =
                crate::sizes::find(&s.name).ok_or_else(|| invalid(&what, "unknown size"))?;
            let os = os_key(&what, &s.os)?;
            let row = (
                money(&what, s.usd_per_hour)?,
                provenance(&what, s.as_of, s.source)?,
            );
            if size
                .insert((known.name.to_string(), s.region, os), row)
                .is_some()
            {
                return Err(invalid(what, "listed twice"));
            }
        }
        Ok(PriceTable {
            currency: raw.currency,
            hours_per_month: raw.hours_per_month,
            vmgs,
            encrypted_per_gib,
            compute,
            windows,
            region,
            size,
        })
    }

    /// The table's currency.
    pub fn currency(&self) -> &str {
        &self.currency
    }

    /// The price of one VM of `size` in `region` running `os`, with an OS disk of
    /// `os_disk_gib` GiB that is confidentially encrypted when `encrypted_disk`.
    pub fn quote(
        &self,
        size: &Size,
        region: &str,
        os: OsType,
        encrypted_disk: bool,
        os_disk_gib: u32,
    ) -> Quote {
        let os_key = os.name();
        let mut lines = Vec::new();
        let hourly = match self
            .size
            .get(&(size.name.to_string(), region.to_string(), os_key))
        {
            Some((price, p)) => {
                lines.push(QuoteLine::new("compute", *price, "per hour", p));
                *price
            }
            None => {
                let (rate, p) = self
                    .compute
                    .get(&(size.series, os_key))
                    .or_else(|| self.compute.get(&(size.series, "linux")))
                    .cloned()
                    .unwrap_or_default();
                let mut hourly = rate.mul_div(u64::from(size.vcpus), 1);
                lines.push(QuoteLine::new(
                    "compute",
                    hourly,
                    &format!("per hour ({} vCPUs at {rate})", size.vcpus),
                    &p,
                ));
                let windows_rate_listed = self.compute.contains_key(&(size.series, os_key));
                if os == OsType::Windows && !windows_rate_listed {
                    let (adder, p) = &self.windows;
                    let licence = adder.mul_div(u64::from(size.vcpus), 1);
                    lines.push(QuoteLine::new("windows licence", licence, "per hour", p));
                    hourly = Micros(hourly.0.saturating_add(licence.0));
                }
                if let Some((factor, p)) = self.region.get(region) {
                    let adjusted = hourly.mul_div(*factor, 1_000_000);
                    lines.push(QuoteLine::new(
                        "region factor",
                        adjusted,
                        &format!("per hour, x{}", *factor as f64 / 1e6),
                        p,
                    ));
                    hourly = adjusted;
                }
                hourly
            }
        };
        let compute_month = hourly.mul_div(u64::from(self.hours_per_month), 1);
        let vmgs = self.vmgs.0;
        lines.push(QuoteLine::new("vmgs disk", vmgs, "per month", &self.vmgs.1));
        let encrypted = if encrypted_disk {
            let m = self.encrypted_per_gib.0.mul_div(u64::from(os_disk_gib), 1);
            lines.push(QuoteLine::new(
                "encrypted os disk",
                m,
                &format!("per month ({os_disk_gib} GiB)"),
                &self.encrypted_per_gib.1,
            ));
            m
        } else {
            Micros(0)
        };
        let total = Micros(
            compute_month
                .0
                .saturating_add(vmgs.0)
                .saturating_add(encrypted.0),
        );
        Quote {
            currency: self.currency.clone(),
            compute_per_hour: hourly,
            compute_per_month: compute_month,
            vmgs_per_month: vmgs,
            encrypted_os_disk_per_month: encrypted,
            total_per_month: total,
            hours_per_month: self.hours_per_month,
            lines,
        }
    }
}

/// One line of a quote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuoteLine {
    /// What is charged.
    pub item: String,
    /// The amount.
    pub amount: Micros,
    /// Per what.
    pub unit: String,
    /// The table row's provenance.
    pub provenance: Provenance,
}

impl QuoteLine {
    fn new(item: &str, amount: Micros, unit: &str, p: &Provenance) -> QuoteLine {
        QuoteLine {
            item: item.to_string(),
            amount,
            unit: unit.to_string(),
            provenance: p.clone(),
        }
    }
}

/// The price of one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    /// The currency.
    pub currency: String,
    /// Compute per hour.
    pub compute_per_hour: Micros,
    /// Compute per month (`hours_per_month` hours).
    pub compute_per_month: Micros,
    /// The VMGS disk per month.
    pub vmgs_per_month: Micros,
    /// The encrypted OS disk's surcharge per month (zero when not encrypted).
    pub encrypted_os_disk_per_month: Micros,
    /// Everything per month.
    pub total_per_month: Micros,
    /// Hours in the month the table bills.
    pub hours_per_month: u32,
    /// How the figures were reached.
    pub lines: Vec<QuoteLine>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizes::find;

    #[test]
    fn the_default_table_parses_and_prices_the_captured_size_exactly() {
        let t = PriceTable::default_table();
        let q = t.quote(
            find("Standard_DC2as_v5").unwrap(),
            "eastus",
            OsType::Linux,
            false,
            30,
        );
        assert_eq!(q.compute_per_hour, Micros(86_000));
        assert_eq!(q.compute_per_month, Micros(86_000 * 730));
        assert_eq!(q.vmgs_per_month, Micros(300_000));
        assert_eq!(q.encrypted_os_disk_per_month, Micros(0));
        assert_eq!(q.total_per_month, Micros(86_000 * 730 + 300_000));
        assert!(q.lines[0].provenance.source.contains("kythira"));
    }

    #[test]
    fn rates_scale_by_vcpus_region_os_and_encryption() {
        let t = PriceTable::default_table();
        let dc4 = find("Standard_DC4as_v5").unwrap();
        let q = t.quote(dc4, "eastus", OsType::Linux, false, 30);
        assert_eq!(q.compute_per_hour, Micros(4 * 43_000));
        let eu = t.quote(dc4, "westeurope", OsType::Linux, false, 30);
        assert_eq!(eu.compute_per_hour, Micros(4 * 43_000 * 11 / 10));
        let win = t.quote(dc4, "eastus", OsType::Windows, false, 30);
        assert_eq!(win.compute_per_hour, Micros(4 * (43_000 + 45_000)));
        let enc = t.quote(dc4, "eastus", OsType::Linux, true, 30);
        assert_eq!(enc.encrypted_os_disk_per_month, Micros(30 * 75_000));
        assert_eq!(enc.total_per_month.0 - q.total_per_month.0, 30 * 75_000);
        // A region the table does not list is priced at the base rate.
        let other = t.quote(dc4, "westus", OsType::Linux, false, 30);
        assert_eq!(other.compute_per_hour, q.compute_per_hour);
        assert_eq!(format!("{}", Micros(86_000)), "0.086000");
    }

    #[test]
    fn a_broken_table_is_refused_with_the_row_named() {
        let bad = |from: &str, to: &str| {
            let text = DEFAULT_TABLE.replacen(from, to, 1);
            assert_ne!(text, DEFAULT_TABLE, "{from}");
            PriceTable::parse(&text).unwrap_err().to_string()
        };
        assert!(
            bad("usd_per_vcpu_hour = 0.043", "usd_per_vcpu_hour = -1")
                .contains("compute DCasv5/linux")
        );
        assert!(
            bad("usd_per_vcpu_hour = 0.043", "usd_per_vcpu_hour = nan")
                .contains("compute DCasv5/linux")
        );
        assert!(bad("series = \"DCasv5\"", "series = \"DCesv5\"").contains("unknown series"));
        assert!(bad("series = \"DCasv5\"", "series = \"DCadsv5\"").contains("listed twice"));
        assert!(
            bad(
                "name = \"Standard_DC2as_v5\"",
                "name = \"Standard_D2as_v5\""
            )
            .contains("unknown size")
        );
        assert!(bad("currency = \"USD\"", "currency = \"dollars\"").contains("currency"));
        assert!(bad("factor = 1.1", "factor = 0").contains("westeurope"));
        assert!(bad("hours_per_month = 730", "hours_per_month = 730\nextra = 1").contains("extra"));
        assert!(bad("as_of = \"2026-08\"", "as_of = \"\"").contains("vmgs"));
    }
}
