//! AMD's SEV-SNP certificates and their extensions.
//!
//! The AMD key hierarchy (AMD "Versioned Chip Endorsement Key" specification, 57230):
//! the AMD Root Key (ARK) signs the AMD SEV Key (ASK) and the AMD SEV VLEK key (ASVK);
//! the ASK signs VCEKs, the ASVK signs VLEKs. ARK, ASK and ASVK are RSA-4096; VCEK and
//! VLEK are ECDSA P-384. Every signature is RSASSA-PSS with SHA-384, MGF1-SHA-384 and
//! a 48-byte salt. VEK certificates carry AMD extensions under `1.3.6.1.4.1.3704.1`
//! that name the product, the TCB the key was derived for and the chip.
//!
//! AMD's ARK carries basicConstraints `CA:TRUE` and keyUsage `keyCertSign, cRLSign`;
//! ASKs and ASVKs `CA:TRUE, pathlen:0` and `keyCertSign` (both critical); VEKs carry
//! neither. VEKs have serial number 0 and the signatures are RSASSA-PSS, which many
//! generic path validators do not handle: [`crate::chain`] checks each link
//! explicitly, these constraints included ([`AmdCert::constraints`]).

use std::fmt;

use aws_lc_rs::signature::{self, ParsedPublicKey};
use der::asn1::{Ia5StringRef, ObjectIdentifier};
use der::{Decode, Encode, Header, Reader, SliceReader};
use x509_cert::Certificate;

use crate::product::Product;
use crate::tcb::TcbVersion;

/// Why a certificate could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Not a DER (or PEM) X.509 certificate.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// The signature algorithm is not RSASSA-PSS with SHA-384 and salt 48.
    #[error("{cert}: signature algorithm is not RSASSA-PSS/SHA-384/salt 48")]
    SignatureAlgorithm {
        /// Which certificate.
        cert: String,
    },
    /// The public key is not of the kind this certificate must hold.
    #[error("{cert}: public key is not {expected}")]
    KeyType {
        /// Which certificate.
        cert: String,
        /// What was expected.
        expected: &'static str,
    },
    /// An AMD extension is missing or malformed.
    #[error("{cert}: extension {name} ({oid}) {problem}")]
    Extension {
        /// Which certificate.
        cert: String,
        /// The extension's name.
        name: &'static str,
        /// Its OID.
        oid: String,
        /// What is wrong.
        problem: String,
    },
    /// The certificate's subject is not a VCEK or VLEK.
    #[error("certificate with subject CN {0:?} is not a VCEK or VLEK")]
    NotAVek(String),
    /// A PEM document could not be decoded.
    #[error("malformed PEM: {0}")]
    Pem(String),
}

/// `1.2.840.113549.1.1.10`, id-RSASSA-PSS.
const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
/// `1.2.840.113549.1.1.1`, rsaEncryption.
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// `1.2.840.10045.2.1`, id-ecPublicKey.
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// `1.3.132.0.34`, secp384r1.
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// `2.5.29.19`, basicConstraints.
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
/// `2.5.29.15`, keyUsage.
const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
/// `2.5.4.3`, commonName.
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// RSASSA-PSS-params {SHA-384, MGF1-SHA-384, salt 48, trailer 1} as AMD encodes them
/// (with the trailer field written out).
const PSS_PARAMS_AMD: &[u8] = &[
    0x30, 0x39, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
    0x02, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
    0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0xa2, 0x03, 0x02, 0x01, 0x30, 0xa3, 0x03, 0x02, 0x01, 0x01,
];
/// The same parameters with the default trailer field omitted (strict DER).
const PSS_PARAMS_DER: &[u8] = &[
    0x30, 0x34, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
    0x02, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
    0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0xa2, 0x03, 0x02, 0x01, 0x30,
];

/// What a certificate's basicConstraints and keyUsage extensions allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Constraints {
    /// basicConstraints is present and says `cA: TRUE`.
    pub ca: bool,
    /// The pathLenConstraint, when present.
    pub path_len: Option<u8>,
    /// keyUsage is present.
    pub key_usage_present: bool,
    /// keyUsage allows `keyCertSign`.
    pub key_cert_sign: bool,
    /// keyUsage allows `cRLSign`.
    pub crl_sign: bool,
}

/// A parsed X.509 certificate that keeps its received DER and its signed bytes.
#[derive(Clone)]
pub struct AmdCert {
    der: Vec<u8>,
    tbs_range: (usize, usize),
    cert: Certificate,
    subject_cn: String,
    issuer_cn: String,
    sha256: [u8; 32],
}

impl fmt::Debug for AmdCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmdCert")
            .field("subject", &self.subject_cn)
            .field("issuer", &self.issuer_cn)
            .finish_non_exhaustive()
    }
}

pub(crate) fn common_name(name: &x509_cert::name::Name) -> String {
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == COMMON_NAME {
                return String::from_utf8_lossy(atv.value.value()).into_owned();
            }
        }
    }
    String::new()
}

/// The byte range of `tbsCertificate` (or `tbsCertList`) inside a signed DER object.
pub(crate) fn signed_part_range(der_bytes: &[u8]) -> Result<(usize, usize), der::Error> {
    let mut r = SliceReader::new(der_bytes)?;
    let _outer = Header::decode(&mut r)?;
    let start = usize::try_from(r.position())?;
    let inner = Header::decode(&mut r)?;
    let header_len = usize::try_from(r.position())? - start;
    let end = start + header_len + usize::try_from(inner.length)?;
    if end > der_bytes.len() {
        return Err(der::ErrorKind::Incomplete {
            expected_len: inner.length,
            actual_len: r.remaining_len(),
        }
        .into());
    }
    Ok((start, end))
}

/// Whether an AlgorithmIdentifier is RSASSA-PSS with AMD's parameters.
pub(crate) fn is_amd_pss(alg: &x509_cert::spki::AlgorithmIdentifierOwned) -> bool {
    if alg.oid != RSASSA_PSS {
        return false;
    }
    match alg.parameters.as_ref().map(|p| p.to_der()) {
        Some(Ok(p)) => p == PSS_PARAMS_AMD || p == PSS_PARAMS_DER,
        _ => false,
    }
}

/// Converts an X.509 time to seconds since the Unix epoch.
pub(crate) fn unix_seconds(t: x509_cert::time::Time) -> i64 {
    i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
}

impl AmdCert {
    /// Parses a DER certificate.
    pub fn from_der(der_bytes: &[u8]) -> Result<Self, CertError> {
        let cert =
            Certificate::from_der(der_bytes).map_err(|e| CertError::Malformed(e.to_string()))?;
        let tbs_range =
            signed_part_range(der_bytes).map_err(|e| CertError::Malformed(e.to_string()))?;
        let subject_cn = common_name(&cert.tbs_certificate.subject);
        let issuer_cn = common_name(&cert.tbs_certificate.issuer);
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der_bytes).as_ref(),
        );
        Ok(AmdCert {
            der: der_bytes.to_vec(),
            tbs_range,
            cert,
            subject_cn,
            issuer_cn,
            sha256,
        })
    }

    /// Parses DER, or the first certificate of a PEM document.
    pub fn from_der_or_pem(data: &[u8]) -> Result<Self, CertError> {
        match parse_bundle(data)?.into_iter().next() {
            Some(c) => Ok(c),
            None => Err(CertError::Pem("no certificate found".into())),
        }
    }

    /// The certificate as received.
    pub fn der(&self) -> &[u8] {
        &self.der
    }
    /// The bytes the issuer signed.
    pub fn tbs(&self) -> &[u8] {
        &self.der[self.tbs_range.0..self.tbs_range.1]
    }
    /// The parsed certificate.
    pub fn x509(&self) -> &Certificate {
        &self.cert
    }
    /// The subject's common name.
    pub fn subject_cn(&self) -> &str {
        &self.subject_cn
    }
    /// The issuer's common name.
    pub fn issuer_cn(&self) -> &str {
        &self.issuer_cn
    }
    /// SHA-256 of the DER encoding (computed once, when parsed).
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }
    /// The serial number's bytes (big-endian, as encoded).
    pub fn serial(&self) -> &[u8] {
        self.cert.tbs_certificate.serial_number.as_bytes()
    }
    /// Not-before, seconds since the Unix epoch.
    pub fn not_before(&self) -> i64 {
        unix_seconds(self.cert.tbs_certificate.validity.not_before)
    }
    /// Not-after, seconds since the Unix epoch.
    pub fn not_after(&self) -> i64 {
        unix_seconds(self.cert.tbs_certificate.validity.not_after)
    }
    /// Whether `at` (Unix seconds) is inside the validity window.
    pub fn valid_at(&self, at: i64) -> bool {
        self.not_before() <= at && at <= self.not_after()
    }
    /// The raw subjectPublicKey bits.
    pub fn public_key_bits(&self) -> &[u8] {
        self.cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes()
    }
    /// Whether the signature algorithm is AMD's RSASSA-PSS/SHA-384/salt 48.
    pub fn has_amd_signature_algorithm(&self) -> bool {
        is_amd_pss(&self.cert.signature_algorithm)
            && is_amd_pss(&self.cert.tbs_certificate.signature)
    }
    /// The signature bits.
    pub fn signature(&self) -> &[u8] {
        self.cert.signature.raw_bytes()
    }

    /// The basicConstraints and keyUsage this certificate carries. Either extension
    /// appearing twice, or not decoding, is an error.
    pub fn constraints(&self) -> Result<Constraints, CertError> {
        use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
        let mut out = Constraints::default();
        let (mut seen_bc, mut seen_ku) = (false, false);
        let bad =
            |name: &'static str, oid: &ObjectIdentifier, problem: &str| CertError::Extension {
                cert: self.subject_cn.clone(),
                name,
                oid: oid.to_string(),
                problem: problem.to_owned(),
            };
        for e in self.cert.tbs_certificate.extensions.iter().flatten() {
            if e.extn_id == BASIC_CONSTRAINTS {
                if std::mem::replace(&mut seen_bc, true) {
                    return Err(bad("basicConstraints", &e.extn_id, "appears twice"));
                }
                let bc = BasicConstraints::from_der(e.extn_value.as_bytes())
                    .map_err(|_| bad("basicConstraints", &e.extn_id, "does not decode"))?;
                out.ca = bc.ca;
                out.path_len = bc.path_len_constraint;
            } else if e.extn_id == KEY_USAGE {
                if std::mem::replace(&mut seen_ku, true) {
                    return Err(bad("keyUsage", &e.extn_id, "appears twice"));
                }
                let ku = KeyUsage::from_der(e.extn_value.as_bytes())
                    .map_err(|_| bad("keyUsage", &e.extn_id, "does not decode"))?;
                out.key_usage_present = true;
                out.key_cert_sign = ku.0.contains(KeyUsages::KeyCertSign);
                out.crl_sign = ku.0.contains(KeyUsages::CRLSign);
            }
        }
        Ok(out)
    }

    /// This certificate's RSA key (an ARK, ASK or ASVK), ready to verify PSS signatures.
    pub fn rsa_pss_key(&self) -> Result<ParsedPublicKey, CertError> {
        let spki = &self.cert.tbs_certificate.subject_public_key_info;
        if spki.algorithm.oid != RSA_ENCRYPTION && spki.algorithm.oid != RSASSA_PSS {
            return Err(CertError::KeyType {
                cert: self.subject_cn.clone(),
                expected: "RSA",
            });
        }
        ParsedPublicKey::new(&signature::RSA_PSS_2048_8192_SHA384, self.public_key_bits()).map_err(
            |_| CertError::KeyType {
                cert: self.subject_cn.clone(),
                expected: "a valid RSA key",
            },
        )
    }

    /// Whether `key` (the issuer's) made this certificate's signature, with AMD's
    /// algorithm.
    pub fn is_signed_by(&self, key: &ParsedPublicKey) -> bool {
        self.has_amd_signature_algorithm() && key.verify_sig(self.tbs(), self.signature()).is_ok()
    }
}

/// Parses every certificate in a PEM bundle, a single DER certificate, or the
/// certificate table of an extended report (`SNP_GET_EXT_REPORT`: its ARK, ASK/ASVK
/// and VCEK/VLEK entries).
pub fn parse_bundle(data: &[u8]) -> Result<Vec<AmdCert>, CertError> {
    let text = match std::str::from_utf8(data) {
        Ok(t) if t.contains("-----BEGIN") => t,
        _ => {
            return match AmdCert::from_der(data) {
                Ok(c) => Ok(vec![c]),
                Err(e) => match crate::certtable::CertTable::parse(data) {
                    Ok(table) if !table.entries().is_empty() => {
                        use crate::certtable::CertKind;
                        [CertKind::Vcek, CertKind::Vlek, CertKind::Ask, CertKind::Ark]
                            .into_iter()
                            .filter_map(|k| table.get_kind(k))
                            .map(AmdCert::from_der)
                            .collect()
                    }
                    _ => Err(e),
                },
            };
        }
    };
    let out = crate::pem::decode_blocks(text, "CERTIFICATE", crate::pem::Outside::Ignore)
        .map_err(CertError::Pem)?
        .iter()
        .map(|der_bytes| AmdCert::from_der(der_bytes))
        .collect::<Result<Vec<_>, _>>()?;
    if out.is_empty() {
        return Err(CertError::Pem("no CERTIFICATE block".into()));
    }
    Ok(out)
}

/// Which kind of versioned endorsement key a certificate holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VekKind {
    /// Versioned chip endorsement key, signed by the ASK.
    Vcek,
    /// Versioned loaded endorsement key, signed by the ASVK.
    Vlek,
}

impl VekKind {
    /// Lower-case name (`vcek`, `vlek`), as in KDS paths.
    pub fn name(self) -> &'static str {
        match self {
            VekKind::Vcek => "vcek",
            VekKind::Vlek => "vlek",
        }
    }
}

impl fmt::Display for VekKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VekKind::Vcek => "VCEK",
            VekKind::Vlek => "VLEK",
        })
    }
}

/// The AMD extensions of a VCEK or VLEK certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VekExtensions {
    /// `structVersion` (1.3.6.1.4.1.3704.1.1).
    pub struct_version: u32,
    /// `productName` (1.3.6.1.4.1.3704.1.2), such as `Milan-B0`.
    pub product_name: String,
    /// `blSPL` (…1.3.1).
    pub bl_spl: u8,
    /// `teeSPL` (…1.3.2).
    pub tee_spl: u8,
    /// `snpSPL` (…1.3.3).
    pub snp_spl: u8,
    /// `spl4`–`spl7` (…1.3.4–1.3.7), where present.
    pub spl4_7: [Option<u8>; 4],
    /// `ucodeSPL` (…1.3.8).
    pub ucode_spl: u8,
    /// `fmcSPL` (…1.3.9), Turin and later.
    pub fmc_spl: Option<u8>,
    /// `hwID` (…1.4): 64 bytes, or 8 on Turin; absent in a VLEK.
    pub hw_id: Option<Vec<u8>>,
    /// `cspID` (…1.5): the cloud provider a VLEK was issued to.
    pub csp_id: Option<String>,
}

const AMD_ARC: &str = "1.3.6.1.4.1.3704.1";

/// A VCEK or VLEK certificate with its AMD extensions decoded.
#[derive(Clone)]
pub struct Vek {
    cert: AmdCert,
    kind: VekKind,
    product: Product,
    ext: VekExtensions,
    key: ParsedPublicKey,
}

impl fmt::Debug for Vek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vek")
            .field("kind", &self.kind)
            .field("product", &self.product)
            .field("ext", &self.ext)
            .finish_non_exhaustive()
    }
}

impl Vek {
    /// Parses a VCEK or VLEK from DER or PEM.
    pub fn parse(data: &[u8]) -> Result<Self, CertError> {
        Self::from_cert(AmdCert::from_der_or_pem(data)?)
    }

    /// Interprets a parsed certificate as a VCEK or VLEK.
    pub fn from_cert(cert: AmdCert) -> Result<Self, CertError> {
        let kind = match cert.subject_cn() {
            "SEV-VCEK" => VekKind::Vcek,
            "SEV-VLEK" => VekKind::Vlek,
            other => return Err(CertError::NotAVek(other.to_owned())),
        };
        let name = cert.subject_cn().to_owned();
        let spki = &cert.x509().tbs_certificate.subject_public_key_info;
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        if spki.algorithm.oid != EC_PUBLIC_KEY || curve != Some(SECP384R1) {
            return Err(CertError::KeyType {
                cert: name,
                expected: "ECDSA P-384",
            });
        }
        let key = ParsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, cert.public_key_bits())
            .map_err(|_| CertError::KeyType {
                cert: name.clone(),
                expected: "a valid P-384 point",
            })?;
        let ext = decode_extensions(&cert, kind)?;
        let product = Product::from_vek_product_name(&ext.product_name).ok_or_else(|| {
            CertError::Extension {
                cert: name.clone(),
                name: "productName",
                oid: format!("{AMD_ARC}.2"),
                problem: format!("names unknown product {:?}", ext.product_name),
            }
        })?;
        Ok(Vek {
            cert,
            kind,
            product,
            ext,
            key,
        })
    }

    /// The certificate.
    pub fn cert(&self) -> &AmdCert {
        &self.cert
    }
    /// VCEK or VLEK.
    pub fn kind(&self) -> VekKind {
        self.kind
    }
    /// The product from `productName`.
    pub fn product(&self) -> Product {
        self.product
    }
    /// The AMD extensions.
    pub fn extensions(&self) -> &VekExtensions {
        &self.ext
    }
    /// The TCB the key was derived for, in the product's layout.
    pub fn tcb(&self) -> TcbVersion {
        let e = &self.ext;
        match self.ext.fmc_spl {
            Some(fmc) => TcbVersion::turin(fmc, e.bl_spl, e.tee_spl, e.snp_spl, e.ucode_spl),
            None => TcbVersion::milan_genoa(e.bl_spl, e.tee_spl, e.snp_spl, e.ucode_spl),
        }
    }
    /// The P-384 public key, ready to verify report signatures.
    pub fn public_key(&self) -> &ParsedPublicKey {
        &self.key
    }
}

fn decode_extensions(cert: &AmdCert, kind: VekKind) -> Result<VekExtensions, CertError> {
    let name = cert.subject_cn().to_owned();
    let mut found: Vec<(String, &[u8])> = Vec::new();
    if let Some(exts) = &cert.x509().tbs_certificate.extensions {
        for e in exts {
            let oid = e.extn_id.to_string();
            if oid.starts_with(AMD_ARC) {
                if found.iter().any(|(o, _)| *o == oid) {
                    return Err(CertError::Extension {
                        cert: name,
                        name: "AMD extension",
                        oid,
                        problem: "appears twice".into(),
                    });
                }
                found.push((oid, e.extn_value.as_bytes()));
            }
        }
    }
    let get = |suffix: &str| {
        let oid = format!("{AMD_ARC}.{suffix}");
        found.iter().find(|(o, _)| *o == oid).map(|(_, v)| *v)
    };
    let err = |field: &'static str, suffix: &str, problem: &str| CertError::Extension {
        cert: name.clone(),
        name: field,
        oid: format!("{AMD_ARC}.{suffix}"),
        problem: problem.to_owned(),
    };
    let int = |field: &'static str, suffix: &str| -> Result<Option<u8>, CertError> {
        match get(suffix) {
            None => Ok(None),
            Some(v) => u8::from_der(v)
                .map(Some)
                .map_err(|_| err(field, suffix, "is not an INTEGER in 0..=255")),
        }
    };
    let required = |field: &'static str, suffix: &str| -> Result<u8, CertError> {
        int(field, suffix)?.ok_or_else(|| err(field, suffix, "is missing"))
    };
    let struct_version = match get("1") {
        None => 0,
        Some(v) => u32::from_der(v).map_err(|_| err("structVersion", "1", "is not an INTEGER"))?,
    };
    let product_name = match get("2") {
        Some(v) => Ia5StringRef::from_der(v)
            .map_err(|_| err("productName", "2", "is not an IA5String"))?
            .as_str()
            .to_owned(),
        None => return Err(err("productName", "2", "is missing")),
    };
    let fmc_spl = int("fmcSPL", "3.9")?;
    let hw_id = match get("4") {
        None => None,
        Some(v) => Some(
            decode_hwid(v, fmc_spl.is_some())
                .ok_or_else(|| err("hwID", "4", "has an unexpected length"))?,
        ),
    };
    let csp_id = match get("5") {
        None => None,
        Some(v) => Some(
            Ia5StringRef::from_der(v)
                .map_err(|_| err("cspID", "5", "is not an IA5String"))?
                .as_str()
                .to_owned(),
        ),
    };
    match (kind, &hw_id, &csp_id) {
        (VekKind::Vcek, None, _) => return Err(err("hwID", "4", "is missing from a VCEK")),
        (VekKind::Vlek, Some(_), _) => return Err(err("hwID", "4", "must not appear in a VLEK")),
        (VekKind::Vlek, _, None) => return Err(err("cspID", "5", "is missing from a VLEK")),
        _ => {}
    }
    Ok(VekExtensions {
        struct_version,
        product_name,
        bl_spl: required("blSPL", "3.1")?,
        tee_spl: required("teeSPL", "3.2")?,
        snp_spl: required("snpSPL", "3.3")?,
        spl4_7: [
            int("spl4", "3.4")?,
            int("spl5", "3.5")?,
            int("spl6", "3.6")?,
            int("spl7", "3.7")?,
        ],
        ucode_spl: required("ucodeSPL", "3.8")?,
        fmc_spl,
        hw_id,
        csp_id,
    })
}

/// hwID is the raw chip ID (64 bytes; 8 on Turin). Some issuers wrap it in an
/// OCTET STRING; both encodings are accepted since the lengths cannot collide.
fn decode_hwid(v: &[u8], turin: bool) -> Option<Vec<u8>> {
    let want = if turin { 8 } else { 64 };
    if v.len() == want {
        return Some(v.to_vec());
    }
    if v.len() == want + 2 && v[0] == 0x04 && usize::from(v[1]) == want {
        return Some(v[2..].to_vec());
    }
    None
}

/// Parses `data` as a certificate bundle and each certificate as a VEK: the body of
/// the `cert` fuzz target.
pub fn fuzz_cert(data: &[u8]) {
    if let Ok(certs) = parse_bundle(data) {
        for c in certs {
            let _ = (
                c.tbs().len(),
                c.not_before(),
                c.not_after(),
                c.has_amd_signature_algorithm(),
            );
            let _ = c.constraints();
            let _ = c.rsa_pss_key();
            if let Ok(v) = Vek::from_cert(c) {
                let _ = v.tcb().raw();
            }
        }
    }
}
