//! Certificates in AMD's exact shapes, issued by the emulator's own keys.
//!
//! The ARK and ASK are RSA-4096 with the extensions AMD's carry (key usage, subject
//! key identifier, basic constraints, CRL distribution point; the ASK also an
//! authority key identifier); the VCEK is P-384 with serial 0, no CA extensions and
//! AMD's extensions under `1.3.6.1.4.1.3704.1` in AMD's order. Every signature is
//! RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt, parameters encoded as AMD
//! encodes them. The only visible difference from AMD's certificates is the
//! organizational unit, [`snp::chain::EMULATOR_OU`], which labels emulated evidence.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{KeyPair as _, RSA_PSS_SHA384};
use der::asn1::{Any, BitString, ObjectIdentifier, OctetString, SetOfVec, UtcTime};
use der::{Decode, Encode, Tag};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::ext::Extension;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};

use snp::Product;
use snp::tcb::TcbVersion;

/// Why a certificate could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// Encoding failed (a value out of range for DER).
    #[error("encoding certificate: {0}")]
    Encoding(#[from] der::Error),
    /// The signing key refused to sign.
    #[error("signing certificate failed")]
    Signing,
}

const PSS_PARAMS_AMD: &[u8] = &[
    0x30, 0x39, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
    0x02, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
    0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0xa2, 0x03, 0x02, 0x01, 0x30, 0xa3, 0x03, 0x02, 0x01, 0x01,
];
const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");

/// Which certificate of the hierarchy a name is for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Role {
    /// `ARK-<product>`.
    Ark,
    /// `SEV-<product>`.
    Ask,
    /// `SEV-VCEK`.
    Vcek,
    /// `SEV-VLEK-<product>`: the ASVK, which signs VLEKs.
    Asvk,
    /// `SEV-VLEK`.
    Vlek,
}

/// AMD's name layout (OU, C, L, ST, O, CN), with the emulator's OU.
pub(crate) fn name(role: Role, product: Product) -> Result<Name, der::Error> {
    let cn = match role {
        Role::Ark => format!("ARK-{product}"),
        Role::Ask => format!("SEV-{product}"),
        Role::Vcek => "SEV-VCEK".to_owned(),
        Role::Asvk => format!("SEV-VLEK-{product}"),
        Role::Vlek => "SEV-VLEK".to_owned(),
    };
    let attrs: [(&str, Tag, &str); 6] = [
        ("2.5.4.11", Tag::Utf8String, snp::chain::EMULATOR_OU),
        ("2.5.4.6", Tag::PrintableString, "US"),
        ("2.5.4.7", Tag::Utf8String, "Santa Clara"),
        ("2.5.4.8", Tag::Utf8String, "CA"),
        ("2.5.4.10", Tag::Utf8String, "Advanced Micro Devices"),
        ("2.5.4.3", Tag::Utf8String, &cn),
    ];
    let mut rdns = Vec::new();
    for (oid, tag, value) in attrs {
        let atv = AttributeTypeAndValue {
            oid: ObjectIdentifier::new(oid).map_err(|_| der::ErrorKind::OidMalformed)?,
            value: Any::new(tag, value.as_bytes())?,
        };
        rdns.push(RelativeDistinguishedName(SetOfVec::try_from(vec![atv])?));
    }
    Ok(RdnSequence(rdns))
}

/// A DER TLV with a short or long definite length.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn ext(oid: &str, critical: bool, value: Vec<u8>) -> Result<Extension, der::Error> {
    Ok(Extension {
        extn_id: ObjectIdentifier::new(oid).map_err(|_| der::ErrorKind::OidMalformed)?,
        critical,
        extn_value: OctetString::new(value)?,
    })
}

/// SHA-1 of the subjectPublicKey bits, as RFC 5280 method 1 computes key identifiers.
fn key_id(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    let bits = spki.subject_public_key.raw_bytes();
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, bits)
        .as_ref()
        .to_vec()
}

fn crl_dp(product: Product) -> Vec<u8> {
    let uri = format!("https://emulator.opencvm.invalid/vcek/v1/{product}/crl");
    tlv(
        0x30,
        &tlv(0x30, &tlv(0xa0, &tlv(0xa0, &tlv(0x86, uri.as_bytes())))),
    )
}

fn int(v: u32) -> Result<Vec<u8>, der::Error> {
    v.to_der()
}

/// What to put in a certificate.
pub(crate) struct CertSpec<'a> {
    pub role: Role,
    pub product: Product,
    pub serial: &'a [u8],
    pub not_before: u64,
    pub not_after: u64,
    pub subject_spki: &'a [u8],
    pub issuer_spki: &'a [u8],
    /// VCEK and VLEK only: the AMD extensions.
    pub vek: Option<VekExt<'a>>,
}

/// The AMD extensions of a VCEK or VLEK.
pub(crate) struct VekExt<'a> {
    /// The TCB the key is for.
    pub tcb: TcbVersion,
    /// The chip's hwID (VCEK).
    pub hw_id: Option<&'a [u8]>,
    /// The cloud provider's identity (VLEK).
    pub csp_id: Option<&'a str>,
}

fn extensions(
    spec: &CertSpec<'_>,
    subject: &SubjectPublicKeyInfoOwned,
) -> Result<Vec<Extension>, der::Error> {
    const KU: &str = "2.5.29.15";
    const SKI: &str = "2.5.29.14";
    const AKI: &str = "2.5.29.35";
    const BC: &str = "2.5.29.19";
    const CRLDP: &str = "2.5.29.31";
    let ski = tlv(0x04, &key_id(subject));
    Ok(match (spec.role, &spec.vek) {
        (Role::Ark, _) => vec![
            ext(KU, true, vec![0x03, 0x02, 0x01, 0x06])?,
            ext(SKI, false, ski)?,
            ext(BC, true, vec![0x30, 0x03, 0x01, 0x01, 0xff])?,
            ext(CRLDP, false, crl_dp(spec.product))?,
        ],
        (Role::Ask | Role::Asvk, _) => {
            let issuer = SubjectPublicKeyInfoOwned::from_der(spec.issuer_spki)?;
            vec![
                ext(SKI, false, ski)?,
                ext(AKI, false, tlv(0x30, &tlv(0x80, &key_id(&issuer))))?,
                ext(
                    BC,
                    true,
                    vec![0x30, 0x06, 0x01, 0x01, 0xff, 0x02, 0x01, 0x00],
                )?,
                ext(KU, true, vec![0x03, 0x02, 0x01, 0x04])?,
                ext(CRLDP, false, crl_dp(spec.product))?,
            ]
        }
        (Role::Vcek | Role::Vlek, None) => Vec::new(),
        (Role::Vcek | Role::Vlek, Some(vek)) => {
            let tcb = vek.tcb;
            let amd = |suffix: &str| format!("1.3.6.1.4.1.3704.1.{suffix}");
            let spl = |suffix: &str, v: u8| ext(&amd(suffix), false, int(v.into())?);
            let turin = spec.product == Product::Turin;
            // VCEKs name the stepping (except on Turin); VLEKs do not.
            let product_name = match (spec.role, spec.product) {
                (Role::Vcek, Product::Milan) => "Milan-B0",
                (Role::Vcek, Product::Genoa) => "Genoa-B1",
                (_, p) => p.name(),
            };
            let mut v = vec![
                ext(&amd("1"), false, int(u32::from(turin))?)?,
                ext(&amd("2"), false, tlv(0x16, product_name.as_bytes()))?,
            ];
            if let (true, Some(fmc)) = (turin, tcb.fmc()) {
                v.push(spl("3.9", fmc)?);
            }
            v.push(spl("3.1", tcb.bootloader())?);
            v.push(spl("3.2", tcb.tee())?);
            if !turin {
                v.push(spl("3.4", 0)?);
            }
            for s in ["3.5", "3.6", "3.7"] {
                v.push(spl(s, 0)?);
            }
            v.push(spl("3.3", tcb.snp())?);
            v.push(spl("3.8", tcb.microcode())?);
            if let Some(hwid) = vek.hw_id {
                v.push(ext(&amd("4"), false, hwid.to_vec())?);
            }
            if let Some(csp) = vek.csp_id {
                v.push(ext(&amd("5"), false, tlv(0x16, csp.as_bytes()))?);
            }
            v
        }
    })
}

fn utc(secs: u64) -> Result<Time, der::Error> {
    /// 2050-01-01T00:00:00Z.
    const Y2050: u64 = 2_524_608_000;
    let d = std::time::Duration::from_secs(secs);
    Ok(if secs < Y2050 {
        Time::UtcTime(UtcTime::from_unix_duration(d)?)
    } else {
        Time::GeneralTime(der::asn1::GeneralizedTime::from_unix_duration(d)?)
    })
}

/// Issues a certificate per `spec`, signed by `issuer` (an RSA key).
pub(crate) fn issue(
    spec: &CertSpec<'_>,
    issuer: &aws_lc_rs::rsa::KeyPair,
) -> Result<Vec<u8>, IssueError> {
    let subject_spki = SubjectPublicKeyInfoOwned::from_der(spec.subject_spki)?;
    let issuer_role = match spec.role {
        Role::Ark | Role::Ask | Role::Asvk => Role::Ark,
        Role::Vcek => Role::Ask,
        Role::Vlek => Role::Asvk,
    };
    let subject_role = spec.role;
    let alg = AlgorithmIdentifierOwned {
        oid: RSASSA_PSS,
        parameters: Some(Any::from_der(PSS_PARAMS_AMD)?),
    };
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(spec.serial)?,
        signature: alg.clone(),
        issuer: name(issuer_role, spec.product)?,
        validity: Validity {
            not_before: utc(spec.not_before)?,
            not_after: utc(spec.not_after)?,
        },
        subject: name(subject_role, spec.product)?,
        extensions: Some(extensions(spec, &subject_spki)?).filter(|e| !e.is_empty()),
        subject_public_key_info: subject_spki,
        issuer_unique_id: None,
        subject_unique_id: None,
    };
    let tbs_der = tbs.to_der()?;
    let mut sig = vec![0u8; issuer.public_modulus_len()];
    issuer
        .sign(&RSA_PSS_SHA384, &SystemRandom::new(), &tbs_der, &mut sig)
        .map_err(|_| IssueError::Signing)?;
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: alg,
        signature: BitString::from_bytes(&sig)?,
    };
    Ok(cert.to_der()?)
}

/// The SubjectPublicKeyInfo DER of an RSA key pair.
pub(crate) fn rsa_spki(key: &aws_lc_rs::rsa::KeyPair) -> Result<Vec<u8>, IssueError> {
    Ok(key
        .public_key()
        .as_der()
        .map_err(|_| IssueError::Signing)?
        .as_ref()
        .to_vec())
}

/// Issues the ARK's CRL as AMD's KDS serves it: issuer the ARK, thisUpdate `this_update`,
/// nextUpdate `next_update`, the ARK's authority key identifier and cRLNumber
/// `number`, listing `revoked` serials (revoked at `this_update`), RSASSA-PSS-signed by
/// the ARK.
pub(crate) fn issue_crl(
    product: Product,
    ark: &aws_lc_rs::rsa::KeyPair,
    number: u32,
    this_update: u64,
    next_update: u64,
    revoked: &[&[u8]],
) -> Result<Vec<u8>, IssueError> {
    use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
    let ark_spki = SubjectPublicKeyInfoOwned::from_der(&rsa_spki(ark)?)?;
    let alg = AlgorithmIdentifierOwned {
        oid: RSASSA_PSS,
        parameters: Some(Any::from_der(PSS_PARAMS_AMD)?),
    };
    let revoked_certificates = revoked
        .iter()
        .map(|serial| {
            Ok(RevokedCert {
                serial_number: SerialNumber::new(serial)?,
                revocation_date: utc(this_update)?,
                crl_entry_extensions: None,
            })
        })
        .collect::<Result<Vec<_>, der::Error>>()?;
    let tbs = TbsCertList {
        version: Version::V2,
        signature: alg.clone(),
        issuer: name(Role::Ark, product)?,
        this_update: utc(this_update)?,
        next_update: Some(utc(next_update)?),
        revoked_certificates: Some(revoked_certificates).filter(|r| !r.is_empty()),
        crl_extensions: Some(vec![
            ext(
                "2.5.29.35",
                false,
                tlv(0x30, &tlv(0x80, &key_id(&ark_spki))),
            )?,
            ext("2.5.29.20", false, int(number)?)?,
        ]),
    };
    let tbs_der = tbs.to_der()?;
    let mut sig = vec![0u8; ark.public_modulus_len()];
    ark.sign(&RSA_PSS_SHA384, &SystemRandom::new(), &tbs_der, &mut sig)
        .map_err(|_| IssueError::Signing)?;
    let crl = CertificateList {
        tbs_cert_list: tbs,
        signature_algorithm: alg,
        signature: BitString::from_bytes(&sig)?,
    };
    Ok(crl.to_der()?)
}
