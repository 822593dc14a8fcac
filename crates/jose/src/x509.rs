//! Self-signed certificates for token-signing keys (served as `x5c` in the JWKS, the
//! way Azure Attestation publishes its signing certificates).

use std::str::FromStr;
use std::time::Duration;

use der::asn1::{BitString, GeneralizedTime, ObjectIdentifier};
use der::{Decode, Encode};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::certificate::{Certificate, TbsCertificate, Version};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use crate::{Alg, JwtError, TokenSigner};

const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");

fn time(t: i64) -> Result<Time, JwtError> {
    let secs = u64::try_from(t.max(0)).map_err(|_| JwtError::Signing)?;
    let gt = GeneralizedTime::from_unix_duration(Duration::from_secs(secs))
        .map_err(|_| JwtError::Signing)?;
    Ok(Time::GeneralTime(gt))
}

/// A self-signed X.509 v3 certificate for `signer`'s key, subject `CN=<cn>`.
pub fn self_signed(
    signer: &TokenSigner,
    cn: &str,
    now: i64,
    validity_days: i64,
) -> Result<Vec<u8>, JwtError> {
    let name = Name::from_str(&format!("CN={cn}")).map_err(|_| JwtError::Signing)?;
    let sig_alg = AlgorithmIdentifierOwned {
        oid: if signer.alg() == Alg::ES384 {
            ECDSA_WITH_SHA384
        } else {
            SHA256_WITH_RSA
        },
        parameters: if signer.alg() == Alg::ES384 {
            None
        } else {
            Some(der::asn1::Null.into())
        },
    };
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| JwtError::Signing)?;
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial).map_err(|_| JwtError::Signing)?,
        signature: sig_alg.clone(),
        issuer: name.clone(),
        validity: Validity {
            not_before: time(now - 3600)?,
            not_after: time(now.saturating_add(validity_days.saturating_mul(86_400)))?,
        },
        subject: name,
        subject_public_key_info: SubjectPublicKeyInfoOwned::from_der(&signer.spki_der()?)
            .map_err(|_| JwtError::Signing)?,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: None,
    };
    let tbs_der = tbs.to_der().map_err(|_| JwtError::Signing)?;
    let sig = signer.sign_x509(&tbs_der)?;
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: sig_alg,
        signature: BitString::from_bytes(&sig).map_err(|_| JwtError::Signing)?,
    };
    cert.to_der().map_err(|_| JwtError::Signing)
}

/// The subject public key of the DER certificate `der`, as the bytes of its BIT
/// STRING: an RSA key's `RSAPublicKey`, an EC key's uncompressed point.
pub fn public_key_bits(der: &[u8]) -> Result<Vec<u8>, JwtError> {
    let cert = Certificate::from_der(der)
        .map_err(|e| JwtError::BadKey(format!("the pinned certificate: {e}")))?;
    cert.tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .as_bytes()
        .map(<[u8]>::to_vec)
        .ok_or_else(|| JwtError::BadKey("the certificate's key has unused bits".into()))
}
