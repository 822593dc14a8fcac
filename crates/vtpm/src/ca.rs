//! The platform's vTPM certificate authority: an ECDSA P-384 key and a self-signed CA
//! certificate in a directory (created on first use), issuing X.509 certificates for
//! each vTPM's attestation key (what a cloud's "virtual TPM CA" does).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SecureRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair};
use der::asn1::{BitString, GeneralizedTime, ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::certificate::{Certificate, TbsCertificate, Version};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

const ECDSA_WITH_SHA384: &str = "1.2.840.10045.4.3.3";
/// `tcg-kp-AIKCertificate` (TCG EK Credential Profile): the extended key usage of an
/// attestation-key certificate.
pub const TCG_KP_AIK_CERTIFICATE: &str = "2.23.133.8.3";

/// Errors of the vTPM CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing the CA directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The stored key or certificate is unusable.
    #[error("vTPM CA in {0}: {1}")]
    Invalid(PathBuf, String),
    /// Building a certificate failed.
    #[error("certificate encoding: {0}")]
    Encoding(String),
}

fn enc<E: std::fmt::Display>(e: E) -> CaError {
    CaError::Encoding(e.to_string())
}

/// The CA: its key pair and certificate.
pub struct VtpmCa {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    name: Name,
}

impl std::fmt::Debug for VtpmCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VtpmCa")
            .field("subject", &self.name.to_string())
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn time(secs: u64) -> Result<Time, CaError> {
    Ok(Time::GeneralTime(
        GeneralizedTime::from_unix_duration(Duration::from_secs(secs)).map_err(enc)?,
    ))
}

fn oid(s: &str) -> Result<ObjectIdentifier, CaError> {
    ObjectIdentifier::new(s).map_err(enc)
}

fn ext(id: &str, critical: bool, value: Vec<u8>) -> Result<Extension, CaError> {
    Ok(Extension {
        extn_id: oid(id)?,
        critical,
        extn_value: OctetString::new(value).map_err(enc)?,
    })
}

/// A DER TLV with a short or long length.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER from big-endian unsigned bytes.
fn uint(v: &[u8]) -> Vec<u8> {
    let skip = v.iter().take_while(|&&b| b == 0).count();
    let v = &v[skip.min(v.len().saturating_sub(1))..];
    let mut content = Vec::with_capacity(v.len() + 1);
    if v.first().is_some_and(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(v);
    tlv(0x02, &content)
}

/// The `SubjectPublicKeyInfo` (DER) of an RSA public key.
pub fn rsa_spki_der(modulus: &[u8], exponent: u32) -> Vec<u8> {
    let pkcs1 = tlv(
        0x30,
        &[uint(modulus), uint(&exponent.to_be_bytes())].concat(),
    );
    let alg = tlv(
        0x30,
        &[
            tlv(
                0x06,
                &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
            ),
            vec![0x05, 0x00],
        ]
        .concat(),
    );
    let mut bits = vec![0u8];
    bits.extend_from_slice(&pkcs1);
    tlv(0x30, &[alg, tlv(0x03, &bits)].concat())
}

/// SHA-1 of the subjectPublicKey bits (RFC 5280 key identifier, method 1).
fn key_id(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        spki.subject_public_key.raw_bytes(),
    )
    .as_ref()
    .to_vec()
}

impl VtpmCa {
    /// Opens the CA in `dir`, creating its key and certificate on first use.
    pub fn open_or_create(dir: &Path) -> Result<Self, CaError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Io { path, source }
        };
        let key_path = dir.join("ca-key.pk8");
        let cert_path = dir.join("ca-cert.der");
        // The CA's key signs every VM's AK certificate: its directory is private
        // (created 0700, or this user's with no group or other permissions).
        crate::state::private_dir(dir)
            .map_err(|e| CaError::Invalid(dir.to_path_buf(), e.to_string()))?;
        if !key_path.exists() {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, &rng)
                    .map_err(enc)?;
            let key = EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                pkcs8.as_ref(),
            )
            .map_err(enc)?;
            let name = Name::from_str("CN=opencvm virtual TPM CA,O=opencvm").map_err(enc)?;
            let spki_der = key_spki(&key)?;
            let spki = SubjectPublicKeyInfoOwned::from_der(&spki_der).map_err(enc)?;
            let exts = vec![
                ext("2.5.29.19", true, vec![0x30, 0x03, 0x01, 0x01, 0xff])?,
                ext("2.5.29.15", true, vec![0x03, 0x02, 0x01, 0x06])?,
                ext("2.5.29.14", false, tlv(0x04, &key_id(&spki)))?,
            ];
            let t = now();
            let cert = sign(
                &key,
                &name,
                &name,
                spki,
                t.saturating_sub(3600),
                t + 20 * 365 * 86_400,
                exts,
                &rng,
            )?;
            std::fs::write(&cert_path, &cert).map_err(io(&cert_path))?;
            // The key last: its presence marks a complete CA.
            write_secret(&key_path, pkcs8.as_ref()).map_err(io(&key_path))?;
        }
        let pkcs8 = zeroize::Zeroizing::new(std::fs::read(&key_path).map_err(io(&key_path))?);
        let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, &pkcs8)
            .map_err(|e| CaError::Invalid(dir.into(), format!("key: {e}")))?;
        let cert_der = std::fs::read(&cert_path).map_err(io(&cert_path))?;
        let cert = Certificate::from_der(&cert_der)
            .map_err(|e| CaError::Invalid(dir.into(), format!("certificate: {e}")))?;
        if cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(enc)?
            != key_spki(&key)?
        {
            return Err(CaError::Invalid(
                dir.into(),
                "the certificate is not for the key".into(),
            ));
        }
        Ok(Self {
            key,
            name: cert.tbs_certificate.subject.clone(),
            cert_der,
        })
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Issues the certificate of a vTPM attestation key (RSA `modulus`, `exponent`)
    /// for the VM `vm_id`: subject `CN=<vm_id>`, EKU `tcg-kp-AIKCertificate`, valid for
    /// ten years.
    pub fn issue_ak_cert(
        &self,
        modulus: &[u8],
        exponent: u32,
        vm_id: &str,
    ) -> Result<Vec<u8>, CaError> {
        let subject =
            Name::from_str(&format!("CN={vm_id},O=opencvm vTPM attestation key")).map_err(enc)?;
        let spki =
            SubjectPublicKeyInfoOwned::from_der(&rsa_spki_der(modulus, exponent)).map_err(enc)?;
        let issuer_spki =
            SubjectPublicKeyInfoOwned::from_der(&key_spki(&self.key)?).map_err(enc)?;
        let eku = tlv(0x30, &tlv(0x06, oid(TCG_KP_AIK_CERTIFICATE)?.as_bytes()));
        let exts = vec![
            ext("2.5.29.19", true, vec![0x30, 0x00])?,
            ext("2.5.29.15", true, vec![0x03, 0x02, 0x07, 0x80])?,
            ext("2.5.29.37", false, eku)?,
            ext("2.5.29.14", false, tlv(0x04, &key_id(&spki)))?,
            ext(
                "2.5.29.35",
                false,
                tlv(0x30, &tlv(0x80, &key_id(&issuer_spki))),
            )?,
        ];
        let t = now();
        sign(
            &self.key,
            &self.name,
            &subject,
            spki,
            t.saturating_sub(3600),
            t + 10 * 365 * 86_400,
            exts,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
    }
}

fn key_spki(key: &EcdsaKeyPair) -> Result<Vec<u8>, CaError> {
    // id-ecPublicKey with secp384r1, and the uncompressed point.
    let alg = tlv(
        0x30,
        &[
            tlv(0x06, oid("1.2.840.10045.2.1")?.as_bytes()),
            tlv(0x06, oid("1.3.132.0.34")?.as_bytes()),
        ]
        .concat(),
    );
    let mut bits = vec![0u8];
    bits.extend_from_slice(key.public_key().as_ref());
    Ok(tlv(0x30, &[alg, tlv(0x03, &bits)].concat()))
}

#[allow(clippy::too_many_arguments)]
fn sign(
    key: &EcdsaKeyPair,
    issuer: &Name,
    subject: &Name,
    spki: SubjectPublicKeyInfoOwned,
    not_before: u64,
    not_after: u64,
    extensions: Vec<Extension>,
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, CaError> {
    let sig_alg = AlgorithmIdentifierOwned {
        oid: oid(ECDSA_WITH_SHA384)?,
        parameters: None,
    };
    let mut serial = [0u8; 16];
    rng.fill(&mut serial).map_err(enc)?;
    serial[0] = (serial[0] & 0x7f) | 0x01;
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial).map_err(enc)?,
        signature: sig_alg.clone(),
        issuer: issuer.clone(),
        validity: Validity {
            not_before: time(not_before)?,
            not_after: time(not_after)?,
        },
        subject: subject.clone(),
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let tbs_der = tbs.to_der().map_err(enc)?;
    let sig = key.sign(rng, &tbs_der).map_err(enc)?;
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: sig_alg,
        signature: BitString::from_bytes(sig.as_ref()).map_err(enc)?,
    };
    cert.to_der().map_err(enc)
}

fn write_secret(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_persists_and_issues_verifiable_ak_certs() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("ca");
        let ca = VtpmCa::open_or_create(&dir).unwrap();
        let again = VtpmCa::open_or_create(&dir).unwrap();
        assert_eq!(ca.cert_der(), again.cert_der());
        let n = [0xc5u8; 256];
        let der = ca.issue_ak_cert(&n, 65537, "vm-1").unwrap();
        let cert = Certificate::from_der(&der).unwrap();
        let ca_cert = Certificate::from_der(ca.cert_der()).unwrap();
        assert_eq!(cert.tbs_certificate.issuer, ca_cert.tbs_certificate.subject);
        // The signature verifies with the CA's public key.
        let ca_point = ca_cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes()
            .to_vec();
        let pk = signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_ASN1, ca_point);
        pk.verify(
            &cert.tbs_certificate.to_der().unwrap(),
            cert.signature.raw_bytes(),
        )
        .unwrap();
        // The subject key is the AK.
        assert_eq!(
            cert.tbs_certificate
                .subject_public_key_info
                .to_der()
                .unwrap(),
            rsa_spki_der(&n, 65537)
        );
    }
}
