//! SBAT: the generation numbers an image declares in its `.sbat` section, the
//! revocation level (`SbatLevel`) shim applies, and shim's two built-in levels.

use crate::Error;

/// An `.sbat` or level text longer than this is refused.
pub const MAX_SBAT: usize = 64 * 1024;

/// One component an image declares.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Component {
    /// `component_name`, e.g. `grub` or `grub.debian`.
    pub name: String,
    /// `component_generation`.
    pub generation: u32,
    /// The remaining fields (vendor name, package, version, URL), as written.
    pub vendor: Vec<String>,
}

fn text(bytes: &[u8], what: &'static str) -> Result<String, Error> {
    if bytes.len() > MAX_SBAT {
        return Err(Error::Sbat(format!("{what} over {MAX_SBAT} bytes")));
    }
    // Sections are NUL padded.
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8(bytes[..end].to_vec())
        .map_err(|_| Error::Sbat(format!("{what} is not UTF-8")))
}

fn generation(field: &str, line: usize) -> Result<u32, Error> {
    field
        .trim()
        .parse()
        .map_err(|_| Error::Sbat(format!("line {line}: generation {field:?} is not a number")))
}

/// Parses an image's `.sbat` section (CSV, one component per line).
pub fn parse_section(bytes: &[u8]) -> Result<Vec<Component>, Error> {
    let text = text(bytes, ".sbat section")?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.split(',');
        let name = fields.next().unwrap_or_default().trim().to_string();
        let generation = generation(fields.next().unwrap_or_default(), i + 1)?;
        if name.is_empty() {
            return Err(Error::Sbat(format!("line {}: empty component name", i + 1)));
        }
        out.push(Component {
            name,
            generation,
            vendor: fields.map(|f| f.to_string()).collect(),
        });
    }
    if out.first().is_none_or(|c| c.name != "sbat") {
        return Err(Error::Sbat(
            "the first record is not the `sbat` version line".into(),
        ));
    }
    Ok(out)
}

/// A revocation level: `sbat,1,DATESTAMP` then `component,generation` lines (as the
/// `SbatLevel` variable and shim's `.sbatlevel` strings hold them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Level {
    /// The datestamp of the level (e.g. `2025051000`).
    pub datestamp: String,
    /// Minimum generation per component name (the `sbat` line included).
    pub minimums: Vec<(String, u32)>,
}

impl Level {
    /// Parses a level; records may be separated by newlines or spaces.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let text = text(bytes, "SBAT level")?;
        let mut records = text.split_whitespace();
        let first = records
            .next()
            .ok_or_else(|| Error::Sbat("empty SBAT level".into()))?;
        let mut head = first.split(',');
        let (Some("sbat"), Some(gen_field), Some(datestamp)) =
            (head.next(), head.next(), head.next())
        else {
            return Err(Error::Sbat(format!(
                "the level starts with {first:?}, not `sbat,1,DATESTAMP`"
            )));
        };
        let mut minimums = vec![("sbat".to_string(), generation(gen_field, 1)?)];
        for (i, record) in records.enumerate() {
            let mut f = record.split(',');
            let name = f.next().unwrap_or_default();
            let gen_field = f.next().ok_or_else(|| {
                Error::Sbat(format!(
                    "record {}: {record:?} is not `name,generation`",
                    i + 2
                ))
            })?;
            minimums.push((name.to_string(), generation(gen_field, i + 2)?));
        }
        Ok(Self {
            datestamp: datestamp.to_string(),
            minimums,
        })
    }

    /// The first component of `image` whose generation is below this level's minimum
    /// for its name, as (name, image generation, minimum).
    pub fn revoked<'c>(&self, image: &'c [Component]) -> Option<(&'c Component, u32)> {
        self.minimums.iter().find_map(|(name, min)| {
            image
                .iter()
                .find(|c| &c.name == name && c.generation < *min)
                .map(|c| (c, *min))
        })
    }
}

/// Shim's `.sbatlevel` section: the raw "previous" and "latest" level strings (NUL
/// terminator removed), as shim writes them into `SbatLevel`.
pub fn shim_level_strings(section: &[u8]) -> Result<(&[u8], &[u8]), Error> {
    let bad = || Error::Sbat(".sbatlevel section is malformed".into());
    let field = |at: usize| {
        section
            .get(at..at + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
    };
    // u32 version, then offsets (from the end of the version field) of the two strings.
    let string_at = |offset: usize| -> Result<&[u8], Error> {
        let s = 4usize
            .checked_add(offset)
            .and_then(|at| section.get(at..))
            .ok_or_else(bad)?;
        let end = s.iter().position(|&b| b == 0).ok_or_else(bad)?;
        Ok(&s[..end])
    };
    let previous = string_at(field(4).ok_or_else(bad)?)?;
    let latest = string_at(field(8).ok_or_else(bad)?)?;
    Ok((previous, latest))
}

/// Shim's `.sbatlevel` section: the "previous" and "latest" levels it can apply.
pub fn parse_shim_levels(section: &[u8]) -> Result<(Level, Level), Error> {
    let (previous, latest) = shim_level_strings(section)?;
    Ok((Level::parse(previous)?, Level::parse(latest)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRUB: &[u8] =
        b"sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n\
grub,5,Free Software Foundation,grub,2.06,https://www.gnu.org/software/grub/\n\
grub.debian,5,Debian,grub2,2.06-13+deb12u2,https://tracker.debian.org/pkg/grub2\n\0\0";

    #[test]
    fn a_level_above_a_generation_revokes() {
        let image = parse_section(GRUB).unwrap();
        assert_eq!(image.len(), 3);
        let ok = Level::parse(b"sbat,1,2025021800\nshim,4\ngrub,5\n").unwrap();
        assert!(ok.revoked(&image).is_none());
        let revoked = Level::parse(b"sbat,1,2099010100 grub,6").unwrap();
        let (c, min) = revoked.revoked(&image).unwrap();
        assert_eq!((c.name.as_str(), c.generation, min), ("grub", 5, 6));
        let vendor = Level::parse(b"sbat,1,2099010100\ngrub.debian,6\n").unwrap();
        assert_eq!(vendor.revoked(&image).unwrap().0.name, "grub.debian");
        assert!(Level::parse(b"grub,5").is_err());
        assert!(Level::parse(b"sbat,1,1 grub,x").is_err());
        assert!(parse_section(b"grub,5,x\n").is_err());
    }
}
