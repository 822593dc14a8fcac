//! EFI signature lists (`EFI_SIGNATURE_LIST`): the contents of PK, KEK, db, dbx and
//! MokList, as a flat list of owned entries that encodes back to the same layout.

use tcg_eventlog::Guid;

use crate::Error;
use crate::cert::Cert;
use crate::pe::HashAlg;

/// Entries beyond this count are refused (Microsoft's dbx holds about 450).
pub const MAX_ENTRIES: usize = 8192;

/// `EFI_CERT_SHA256_GUID`.
pub const CERT_SHA256: Guid = Guid::from_fields(
    0xc1c4_1626,
    0x504c,
    0x4092,
    [0xac, 0xa9, 0x41, 0xf9, 0x36, 0x93, 0x43, 0x28],
);
/// `EFI_CERT_SHA1_GUID`.
pub const CERT_SHA1: Guid = Guid::from_fields(
    0x826c_a512,
    0xcf10,
    0x4ac9,
    [0xb1, 0x87, 0xbe, 0x01, 0x49, 0x66, 0x31, 0xbd],
);
/// `EFI_CERT_SHA384_GUID`.
pub const CERT_SHA384: Guid = Guid::from_fields(
    0xff3e_5307,
    0x9fd0,
    0x48c9,
    [0x85, 0xf1, 0x8a, 0xd5, 0x6c, 0x70, 0x1e, 0x01],
);
/// `EFI_CERT_SHA512_GUID`.
pub const CERT_SHA512: Guid = Guid::from_fields(
    0x093e_0fae,
    0xa6c4,
    0x4f50,
    [0x9f, 0x1b, 0xd4, 0x1e, 0x2b, 0x89, 0xc1, 0x9a],
);
/// `EFI_CERT_X509_GUID`.
pub const CERT_X509: Guid = Guid::from_fields(
    0xa5c0_59a1,
    0x94e4,
    0x4aa7,
    [0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72],
);
/// `EFI_CERT_X509_SHA256_GUID`.
pub const CERT_X509_SHA256: Guid = Guid::from_fields(
    0x3bd2_a492,
    0x96c0,
    0x4079,
    [0xb4, 0x20, 0xfc, 0xf9, 0x8e, 0xf1, 0x03, 0xed],
);
/// `EFI_CERT_X509_SHA384_GUID`.
pub const CERT_X509_SHA384: Guid = Guid::from_fields(
    0x7076_876e,
    0x80c2,
    0x4ee6,
    [0xaa, 0xd2, 0x28, 0xb3, 0x49, 0xa6, 0x86, 0x5b],
);
/// `EFI_CERT_X509_SHA512_GUID`.
pub const CERT_X509_SHA512: Guid = Guid::from_fields(
    0x446d_bf63,
    0x2502,
    0x4cda,
    [0xbc, 0xfa, 0x24, 0x65, 0xd2, 0xb0, 0xfe, 0x9d],
);
/// `EFI_CERT_TYPE_PKCS7_GUID` (the CertType of authenticated variable updates).
pub const CERT_TYPE_PKCS7: Guid = Guid::from_fields(
    0x4aaf_d29d,
    0x68df,
    0x49ee,
    [0x8a, 0xa9, 0x34, 0x7d, 0x37, 0x56, 0x65, 0xa7],
);
/// The Microsoft signature owner, 77fa9abd-0359-4d32-bd60-28f4e78f784b.
pub const MICROSOFT_OWNER: Guid = Guid::from_fields(
    0x77fa_9abd,
    0x0359,
    0x4d32,
    [0xbd, 0x60, 0x28, 0xf4, 0xe7, 0x8f, 0x78, 0x4b],
);
/// The owner opencvm writes on entries it creates from bare certificates or hashes,
/// 6f70656e-6376-4d00-8000-0000000000b0 (ASCII "opencvm" in its first bytes).
pub const OPENCVM_OWNER: Guid = Guid::from_fields(
    0x6f70_656e,
    0x6376,
    0x4d00,
    [0x80, 0x00, 0, 0, 0, 0, 0, 0xb0],
);

/// What one `EFI_SIGNATURE_DATA` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// A DER X.509 certificate, as stored (some tools zero-pad the entry; the padding is
    /// kept so that the entry measures as firmware measures it).
    X509(Vec<u8>),
    /// An image digest.
    Hash(HashAlg, Vec<u8>),
    /// The hash of a certificate's TBSCertificate and its revocation time
    /// (`EFI_CERT_X509_SHA*`).
    TbsHash(HashAlg, Vec<u8>, [u8; 16]),
    /// A type this crate does not interpret (kept as is).
    Other(Guid, Vec<u8>),
}

/// One entry of a signature database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `SignatureOwner`.
    pub owner: Guid,
    /// The signature.
    pub signature: Signature,
}

impl Entry {
    /// The `EFI_SIGNATURE_DATA` bytes: owner then data (what an authority event measures).
    pub fn signature_data(&self) -> Vec<u8> {
        let mut out = self.owner.0.to_vec();
        match &self.signature {
            Signature::X509(der) => out.extend_from_slice(der),
            Signature::Hash(_, h) => out.extend_from_slice(h),
            Signature::TbsHash(_, h, time) => {
                out.extend_from_slice(h);
                out.extend_from_slice(time);
            }
            Signature::Other(_, d) => out.extend_from_slice(d),
        }
        out
    }

    fn type_guid(&self) -> Guid {
        match &self.signature {
            Signature::X509(_) => CERT_X509,
            Signature::Hash(alg, _) => hash_guid(*alg),
            Signature::TbsHash(alg, _, _) => tbs_guid(*alg),
            Signature::Other(g, _) => *g,
        }
    }
}

fn hash_guid(alg: HashAlg) -> Guid {
    match alg {
        HashAlg::Sha1 => CERT_SHA1,
        HashAlg::Sha256 => CERT_SHA256,
        HashAlg::Sha384 => CERT_SHA384,
        HashAlg::Sha512 => CERT_SHA512,
    }
}

fn tbs_guid(alg: HashAlg) -> Guid {
    match alg {
        HashAlg::Sha512 => CERT_X509_SHA512,
        HashAlg::Sha384 => CERT_X509_SHA384,
        _ => CERT_X509_SHA256,
    }
}

fn u32_le(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

fn esl_err(offset: usize, why: impl Into<String>) -> Error {
    Error::SignatureList {
        offset,
        why: why.into(),
    }
}

/// A signature database: the entries of one variable's signature lists, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignatureDb {
    /// The entries.
    pub entries: Vec<Entry>,
}

impl SignatureDb {
    /// Parses concatenated `EFI_SIGNATURE_LIST`s. Hash and X.509 entries are checked
    /// for their size (and certificates for being DER certificates).
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let mut entries = Vec::new();
        let mut at = 0usize;
        while at < bytes.len() {
            let header = bytes
                .get(at..at + 28)
                .ok_or_else(|| esl_err(at, "truncated EFI_SIGNATURE_LIST header"))?;
            let mut guid = [0u8; 16];
            guid.copy_from_slice(&header[..16]);
            let kind = Guid(guid);
            let list_size = u32_le(header, 16).unwrap_or(0);
            let header_size = u32_le(header, 20).unwrap_or(0);
            let sig_size = u32_le(header, 24).unwrap_or(0);
            let end = at
                .checked_add(list_size)
                .filter(|&e| e <= bytes.len() && list_size >= 28)
                .ok_or_else(|| {
                    esl_err(at, format!("SignatureListSize {list_size} does not fit"))
                })?;
            // Every defined type has an empty SignatureHeader; a header would be lost
            // when the list is written again, so it is refused rather than dropped.
            if header_size != 0 {
                return Err(esl_err(
                    at,
                    format!("SignatureHeaderSize {header_size} (only 0 is defined)"),
                ));
            }
            let body_start = 28usize;
            if sig_size <= 16 || !(list_size - body_start).is_multiple_of(sig_size) {
                return Err(esl_err(
                    at,
                    format!("SignatureSize {sig_size} does not divide the list body"),
                ));
            }
            for chunk in bytes[at + body_start..end].chunks_exact(sig_size) {
                let mut owner = [0u8; 16];
                owner.copy_from_slice(&chunk[..16]);
                let data = &chunk[16..];
                let signature = decode_signature(kind, data).map_err(|why| esl_err(at, why))?;
                entries.push(Entry {
                    owner: Guid(owner),
                    signature,
                });
                if entries.len() > MAX_ENTRIES {
                    return Err(esl_err(at, format!("more than {MAX_ENTRIES} entries")));
                }
            }
            at = end;
        }
        Ok(Self { entries })
    }

    /// Encodes the entries: consecutive entries of one type and size share a list;
    /// each certificate gets its own list (their sizes differ).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.entries.len() {
            let first = &self.entries[i];
            let kind = first.type_guid();
            let size = first.signature_data().len();
            let mut j = i + 1;
            if !matches!(first.signature, Signature::X509(_)) {
                while j < self.entries.len()
                    && self.entries[j].type_guid() == kind
                    && self.entries[j].signature_data().len() == size
                {
                    j += 1;
                }
            }
            let list_size = 28 + size * (j - i);
            out.extend_from_slice(&kind.0);
            out.extend_from_slice(&(list_size as u32).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&(size as u32).to_le_bytes());
            for e in &self.entries[i..j] {
                out.extend_from_slice(&e.signature_data());
            }
            i = j;
        }
        out
    }

    /// The certificates, with their entry index.
    pub fn certificates(&self) -> impl Iterator<Item = (usize, Cert<'_>)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match &e.signature {
                Signature::X509(data) => Cert::parse(x509_der(data)).ok().map(|c| (i, c)),
                _ => None,
            })
    }

    /// The algorithms of its image-digest entries.
    pub fn hash_algorithms(&self) -> Vec<HashAlg> {
        let mut algs: Vec<HashAlg> = self
            .entries
            .iter()
            .filter_map(|e| match &e.signature {
                Signature::Hash(a, _) => Some(*a),
                _ => None,
            })
            .collect();
        algs.sort();
        algs.dedup();
        algs
    }

    /// The index of an entry holding this image digest.
    pub fn find_hash(&self, alg: HashAlg, digest: &[u8]) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| matches!(&e.signature, Signature::Hash(a, h) if *a == alg && h == digest))
    }

    /// The index of an entry revoking `cert` by its TBS hash or whole DER.
    pub fn find_certificate(&self, cert: &Cert<'_>) -> Option<usize> {
        self.entries.iter().position(|e| match &e.signature {
            Signature::X509(data) => x509_der(data) == cert.der,
            Signature::TbsHash(alg, h, _) => *h == cert.tbs_hash(*alg),
            _ => false,
        })
    }
}

/// Copies the signature lists of `bytes` keeping only the entries `keep` accepts, each
/// list with its type, header and entry size, each kept entry byte for byte; a list
/// left empty is dropped.
pub fn filter_lists(bytes: &[u8], keep: impl Fn(&Entry) -> bool) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        // SignatureDb::parse checks each list; parse this one alone.
        let list_size = u32_le(bytes, at + 16).unwrap_or(0);
        let end = at
            .checked_add(list_size)
            .filter(|&e| e <= bytes.len() && list_size >= 28)
            .ok_or_else(|| esl_err(at, format!("SignatureListSize {list_size} does not fit")))?;
        let list = &bytes[at..end];
        let parsed = SignatureDb::parse(list)?;
        let sig_size = u32_le(list, 24).unwrap_or(0);
        let kept: Vec<&[u8]> = list[28..]
            .chunks_exact(sig_size)
            .zip(&parsed.entries)
            .filter(|(_, e)| keep(e))
            .map(|(raw, _)| raw)
            .collect();
        if !kept.is_empty() {
            out.extend_from_slice(&list[..16]);
            out.extend_from_slice(&((28 + kept.len() * sig_size) as u32).to_le_bytes());
            out.extend_from_slice(&list[20..28]);
            for raw in kept {
                out.extend_from_slice(raw);
            }
        }
        at = end;
    }
    Ok(out)
}

/// The first DER element of a certificate entry (the whole entry when it is not DER).
pub(crate) fn x509_der(data: &[u8]) -> &[u8] {
    crate::der::Reader::new(data, "certificate")
        .any()
        .map(|t| t.raw)
        .unwrap_or(data)
}

fn decode_signature(kind: Guid, data: &[u8]) -> Result<Signature, String> {
    let hash = |alg: HashAlg| {
        if data.len() == alg.digest_len() {
            Ok(Signature::Hash(alg, data.to_vec()))
        } else {
            Err(format!("{} entry of {} bytes", alg.name(), data.len()))
        }
    };
    let tbs = |alg: HashAlg| {
        let n = alg.digest_len();
        if data.len() == n + 16 {
            let mut time = [0u8; 16];
            time.copy_from_slice(&data[n..]);
            Ok(Signature::TbsHash(alg, data[..n].to_vec(), time))
        } else {
            Err(format!("X509 {} entry of {} bytes", alg.name(), data.len()))
        }
    };
    match kind {
        CERT_X509 => {
            // Some tools pad certificate entries; the certificate is the first DER element.
            let der = x509_der(data);
            if data[der.len()..].iter().any(|&b| b != 0) {
                return Err("bytes after the certificate".into());
            }
            Cert::parse(der).map_err(|e| e.to_string())?;
            Ok(Signature::X509(data.to_vec()))
        }
        CERT_SHA1 => hash(HashAlg::Sha1),
        CERT_SHA256 => hash(HashAlg::Sha256),
        CERT_SHA384 => hash(HashAlg::Sha384),
        CERT_SHA512 => hash(HashAlg::Sha512),
        CERT_X509_SHA256 => tbs(HashAlg::Sha256),
        CERT_X509_SHA384 => tbs(HashAlg::Sha384),
        CERT_X509_SHA512 => tbs(HashAlg::Sha512),
        other => Ok(Signature::Other(other, data.to_vec())),
    }
}

/// Reads a signature database given as a signature list, an authenticated variable
/// update (`EFI_VARIABLE_AUTHENTICATION_2` then a list: its payload is taken, its
/// signature is not checked here, see [`crate::authvar`]), or certificates (PEM, or one
/// DER), which get the owner `owner`.
pub fn read_signature_db(bytes: &[u8], owner: Guid) -> Result<SignatureDb, Error> {
    if let Ok(update) = crate::authvar::AuthenticatedUpdate::parse(bytes) {
        return SignatureDb::parse(update.payload);
    }
    let looks_like_cert = bytes.first() == Some(&0x30) || bytes.starts_with(b"-----");
    if !looks_like_cert {
        return SignatureDb::parse(bytes);
    }
    let certs = crate::cert::read_certificates(bytes)?;
    Ok(SignatureDb {
        entries: certs
            .into_iter()
            .map(|der| Entry {
                owner,
                signature: Signature::X509(der),
            })
            .collect(),
    })
}

/// Parses a GUID in its usual text form.
pub fn parse_guid(text: &str) -> Result<Guid, Error> {
    let bad = || Error::Usage(format!("{text:?} is not a GUID (8-4-4-4-12 hex digits)"));
    let parts: Vec<&str> = text.split('-').collect();
    if parts.len() != 5
        || [8, 4, 4, 4, 12]
            .iter()
            .zip(&parts)
            .any(|(n, p)| p.len() != *n)
    {
        return Err(bad());
    }
    let d1 = u32::from_str_radix(parts[0], 16).map_err(|_| bad())?;
    let d2 = u16::from_str_radix(parts[1], 16).map_err(|_| bad())?;
    let d3 = u16::from_str_radix(parts[2], 16).map_err(|_| bad())?;
    let tail = hex::decode(format!("{}{}", parts[3], parts[4])).map_err(|_| bad())?;
    let mut d4 = [0u8; 8];
    d4.copy_from_slice(&tail);
    Ok(Guid::from_fields(d1, d2, d3, d4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_round_trip_through_text() {
        for g in [CERT_SHA256, CERT_X509, MICROSOFT_OWNER, OPENCVM_OWNER] {
            assert_eq!(parse_guid(&g.to_string()).unwrap(), g);
        }
        assert_eq!(
            CERT_X509.to_string(),
            "a5c059a1-94e4-4aa7-87b5-ab155c2bf072"
        );
        assert!(parse_guid("a5c059a1-94e4-4aa7-87b5-ab155c2bf07").is_err());
    }

    #[test]
    fn hash_lists_encode_and_parse_back() {
        let db = SignatureDb {
            entries: (0u8..3)
                .map(|i| Entry {
                    owner: OPENCVM_OWNER,
                    signature: Signature::Hash(HashAlg::Sha256, vec![i; 32]),
                })
                .collect(),
        };
        let bytes = db.encode();
        assert_eq!(bytes.len(), 28 + 3 * 48, "one list for three hashes");
        assert_eq!(SignatureDb::parse(&bytes).unwrap(), db);
        let mut bad = bytes.clone();
        bad[24] = 47; // SignatureSize no longer divides the body
        assert!(SignatureDb::parse(&bad).is_err());
        assert!(SignatureDb::parse(&bytes[..bytes.len() - 1]).is_err());
    }
}
