//! The firmware's allow/deny decision for one image against db and dbx, as edk2's
//! `DxeImageVerificationLib` makes it, plus shim's SBAT check.
//!
//! Order: an image digest in dbx refuses; then for each signature, a signer chain
//! that reaches a dbx certificate (or holds a certificate whose TBS hash is in dbx)
//! refuses the image, and a valid signature chaining to a db certificate allows it;
//! an image no signature allowed passes only if its digest is in db. Chains are
//! partial: any db certificate is a trust anchor, and validity dates and key usages
//! are ignored (see [`crate::cert`]). Differences from edk2 are listed in
//! `docs/adr/0014-secure-boot.md`.

use serde::Serialize;

use crate::Error;
use crate::cert::Cert;
use crate::esl::SignatureDb;
use crate::pe::{HashAlg, PeImage};
use crate::pkcs7::{IndirectData, SignedData};
use crate::sbat;

/// Longest chain followed from a signer to an anchor.
const MAX_CHAIN: usize = 8;

/// Builds a chain from `leaf` through `bag` to one of `anchors`: the path (leaf
/// first, anchors excluded) and the anchor's index. A certificate that is itself an
/// anchor (same DER) ends the chain; otherwise an anchor must have signed the last
/// certificate.
pub fn build_chain<'a>(
    leaf: Cert<'a>,
    bag: &[Cert<'a>],
    anchors: &[Cert<'_>],
) -> Option<(Vec<Cert<'a>>, usize)> {
    let mut path = vec![leaf];
    while path.len() <= MAX_CHAIN {
        let cur = *path.last()?;
        if let Some(i) = anchors.iter().position(|a| a.der == cur.der) {
            return Some((path, i));
        }
        if let Some(i) = anchors.iter().position(|a| cur.is_signed_by(a)) {
            return Some((path, i));
        }
        let next = bag
            .iter()
            .find(|b| !path.iter().any(|p| p.der == b.der) && cur.is_signed_by(b))?;
        path.push(*next);
    }
    None
}

/// The certificates from `leaf` up through `bag` as far as issuers are present.
fn signer_path<'a>(leaf: Cert<'a>, bag: &[Cert<'a>]) -> Vec<Cert<'a>> {
    let mut path = vec![leaf];
    while path.len() <= MAX_CHAIN {
        let Some(cur) = path.last().copied() else {
            break;
        };
        match bag
            .iter()
            .find(|b| !path.iter().any(|p| p.der == b.der) && cur.is_signed_by(b))
        {
            Some(next) => path.push(*next),
            None => break,
        }
    }
    path
}

fn ser_alg<S: serde::Serializer>(alg: &Option<HashAlg>, s: S) -> Result<S::Ok, S::Error> {
    match alg {
        Some(a) => s.serialize_some(a.name()),
        None => s.serialize_none(),
    }
}

/// What became of one signature.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum SignatureOutcome {
    /// It chains to a db certificate.
    Db {
        /// The db entry index of the anchor.
        db_entry: usize,
        /// The anchor's subject.
        anchor: String,
    },
    /// The signer or a certificate of its chain is revoked by dbx.
    Dbx {
        /// The dbx entry index.
        dbx_entry: usize,
        /// The revoked certificate's subject.
        certificate: String,
    },
    /// The signature is valid but no chain reaches db.
    NoChain,
    /// The signature is invalid or unsupported.
    Invalid {
        /// Why.
        reason: String,
    },
}

/// One signature's report.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureReport {
    /// The signer's subject, when the signature could be read.
    pub signer: Option<String>,
    /// Signer first, then each issuer found in the signature.
    pub chain: Vec<String>,
    /// The image digest algorithm it signs.
    #[serde(serialize_with = "ser_alg")]
    pub digest_algorithm: Option<HashAlg>,
    /// The outcome.
    #[serde(flatten)]
    pub outcome: SignatureOutcome,
}

/// Why an image is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Refusal {
    /// The image digest is in dbx.
    HashInDbx {
        /// The dbx entry index.
        dbx_entry: usize,
    },
    /// A signer or chain certificate is in dbx.
    SignerInDbx {
        /// The revoked certificate's subject.
        certificate: String,
        /// The dbx entry index.
        dbx_entry: usize,
    },
    /// No signature chains to db and the digest is not in db.
    NotInDb,
    /// An SBAT component generation is below the level.
    Sbat {
        /// The component name.
        component: String,
        /// Its generation in the image.
        generation: u32,
        /// The level's minimum.
        minimum: u32,
    },
    /// The `.sbat` section could not be read.
    SbatMalformed {
        /// Why.
        detail: String,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HashInDbx { dbx_entry } => {
                write!(f, "the image digest is in dbx (entry {dbx_entry})")
            }
            Self::SignerInDbx {
                certificate,
                dbx_entry,
            } => write!(
                f,
                "certificate {certificate:?} of a signer chain is in dbx (entry {dbx_entry})"
            ),
            Self::NotInDb => write!(
                f,
                "no signature chains to a db certificate and the image digest is not in db"
            ),
            Self::Sbat {
                component,
                generation,
                minimum,
            } => write!(
                f,
                "SBAT: component {component} generation {generation} is revoked (the level requires {minimum})"
            ),
            Self::SbatMalformed { detail } => write!(f, "SBAT: {detail}"),
        }
    }
}

/// How an allowed image was allowed: which db entry verified it (what firmware
/// measures as `EV_EFI_VARIABLE_AUTHORITY`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Authority {
    /// A signature chained to this db certificate.
    Certificate {
        /// The db entry index.
        db_entry: usize,
        /// Its subject.
        subject: String,
    },
    /// The image digest is in db.
    Hash {
        /// The db entry index.
        db_entry: usize,
    },
}

impl Authority {
    /// The db entry index.
    pub fn db_entry(&self) -> usize {
        match self {
            Self::Certificate { db_entry, .. } | Self::Hash { db_entry } => *db_entry,
        }
    }
}

/// The verdict on one image.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// `Ok(authority)` when firmware (and shim's SBAT check, if a level was given)
    /// allows the image.
    #[serde(serialize_with = "ser_result")]
    pub result: Result<Authority, Refusal>,
    /// The image's Authenticode SHA-256 (what PCR 4 measures).
    pub sha256: String,
    /// Each signature.
    pub signatures: Vec<SignatureReport>,
    /// The image's SBAT components (`None`: no `.sbat` section).
    pub sbat: Option<Vec<sbat::Component>>,
}

fn ser_result<S: serde::Serializer>(
    r: &Result<Authority, Refusal>,
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    #[serde(tag = "verdict", rename_all = "snake_case")]
    enum Out<'a> {
        Verified {
            authority: &'a Authority,
        },
        Refused {
            refusal: &'a Refusal,
            message: String,
        },
    }
    match r {
        Ok(authority) => Out::Verified { authority }.serialize(s),
        Err(refusal) => Out::Refused {
            refusal,
            message: refusal.to_string(),
        }
        .serialize(s),
    }
}

/// Decides whether firmware with `db` and `dbx` runs `image`, and (with `level`)
/// whether shim's SBAT check passes. Errors only for an image that is not a
/// well-formed PE/COFF file.
pub fn verify_image(
    image: &[u8],
    db: &SignatureDb,
    dbx: &SignatureDb,
    level: Option<&sbat::Level>,
) -> Result<Verdict, Error> {
    let pe = PeImage::parse(image)?;
    let sha256 = pe.authenticode_digest(HashAlg::Sha256)?;
    let blobs = pe.signatures()?;
    let (db_index, db_certs): (Vec<usize>, Vec<Cert<'_>>) = db.certificates().unzip();
    let (dbx_index, dbx_certs): (Vec<usize>, Vec<Cert<'_>>) = dbx.certificates().unzip();

    let mut signatures = Vec::new();
    let mut digests: Vec<(HashAlg, Vec<u8>)> = vec![(HashAlg::Sha256, sha256.clone())];
    // Firmware hashes the image with every algorithm a hash entry of db or dbx uses.
    for alg in db
        .hash_algorithms()
        .into_iter()
        .chain(dbx.hash_algorithms())
    {
        if !digests.iter().any(|(a, _)| *a == alg) {
            digests.push((alg, pe.authenticode_digest(alg)?));
        }
    }
    let mut allowed: Option<Authority> = None;
    let mut forbidden: Option<Refusal> = None;
    for blob in blobs {
        let report = match blob {
            Err(kind) => SignatureReport {
                signer: None,
                chain: Vec::new(),
                digest_algorithm: None,
                outcome: SignatureOutcome::Invalid {
                    reason: format!("WIN_CERTIFICATE type {kind:#06x} is not PKCS#7 SignedData"),
                },
            },
            Ok(blob) => check_signature(
                &pe,
                blob,
                &mut digests,
                (&db_certs, &db_index),
                (&dbx_certs, &dbx_index),
                dbx,
            ),
        };
        match &report.outcome {
            SignatureOutcome::Dbx {
                dbx_entry,
                certificate,
            } if forbidden.is_none() => {
                forbidden = Some(Refusal::SignerInDbx {
                    certificate: certificate.clone(),
                    dbx_entry: *dbx_entry,
                })
            }
            SignatureOutcome::Db { db_entry, anchor } if allowed.is_none() => {
                allowed = Some(Authority::Certificate {
                    db_entry: *db_entry,
                    subject: anchor.clone(),
                })
            }
            _ => {}
        }
        signatures.push(report);
    }
    let hash_in = |list: &SignatureDb| digests.iter().find_map(|(a, d)| list.find_hash(*a, d));
    let mut result = if let Some(dbx_entry) = hash_in(dbx) {
        Err(Refusal::HashInDbx { dbx_entry })
    } else if let Some(refusal) = forbidden {
        Err(refusal)
    } else if let Some(authority) = allowed {
        Ok(authority)
    } else if let Some(db_entry) = hash_in(db) {
        Ok(Authority::Hash { db_entry })
    } else {
        Err(Refusal::NotInDb)
    };
    let sbat = match pe.section_data(".sbat") {
        Some(section) => match sbat::parse_section(section) {
            Ok(components) => Some(components),
            Err(e) => {
                if level.is_some() && result.is_ok() {
                    result = Err(Refusal::SbatMalformed {
                        detail: e.to_string(),
                    });
                }
                None
            }
        },
        None => None,
    };
    if let (Some(level), Some(components), Ok(_)) = (level, &sbat, &result)
        && let Some((component, minimum)) = level.revoked(components)
    {
        result = Err(Refusal::Sbat {
            component: component.name.clone(),
            generation: component.generation,
            minimum,
        });
    }
    Ok(Verdict {
        result,
        sha256: hex::encode(sha256),
        signatures,
        sbat,
    })
}

fn check_signature<'a>(
    pe: &PeImage<'a>,
    blob: &'a [u8],
    digests: &mut Vec<(HashAlg, Vec<u8>)>,
    db: (&[Cert<'_>], &[usize]),
    dbx: (&[Cert<'_>], &[usize]),
    dbx_list: &SignatureDb,
) -> SignatureReport {
    let invalid = |reason: String, signer: Option<String>, alg| SignatureReport {
        signer,
        chain: Vec::new(),
        digest_algorithm: alg,
        outcome: SignatureOutcome::Invalid { reason },
    };
    // edk2 (`HashPeImageByType`) takes the hash from the first digest algorithm's OID at
    // byte 32, which is where it lies in a ContentInfo with two-byte lengths; a blob
    // without one is skipped, dbx and db alike.
    let Some(form_hash) = [
        HashAlg::Sha1,
        HashAlg::Sha256,
        HashAlg::Sha384,
        HashAlg::Sha512,
    ]
    .into_iter()
    .find(|alg| {
        let oid = crate::pkcs7::oid_of(*alg);
        blob.get(1).is_some_and(|b| b & 0x82 == 0x82) && blob.get(32..32 + oid.len()) == Some(oid)
    }) else {
        return invalid(
            "edk2 skips this signature: no ContentInfo with two-byte lengths naming a known hash at byte 32"
                .into(),
            None,
            None,
        );
    };
    // dbx next, whatever else is wrong with the signature: a certificate it carries
    // that dbx revokes (whole or by TBS hash) refuses the image. Read leniently, as
    // firmware would still find the certificates.
    if let Ok(relaxed) = SignedData::parse_relaxed(blob)
        && let Some((dbx_entry, certificate)) = relaxed
            .certificates
            .iter()
            .find_map(|c| dbx_list.find_certificate(c).map(|i| (i, c.subject_name())))
    {
        return SignatureReport {
            signer: None,
            chain: Vec::new(),
            digest_algorithm: None,
            outcome: SignatureOutcome::Dbx {
                dbx_entry,
                certificate,
            },
        };
    }
    let sd = match SignedData::parse(blob) {
        Ok(sd) => sd,
        Err(e) => return invalid(e.to_string(), None, None),
    };
    let indirect = match IndirectData::parse(&sd) {
        Ok(i) => i,
        Err(e) => return invalid(e.to_string(), None, None),
    };
    let alg = Some(indirect.hash);
    if sd.first_digest_algorithm != Some(indirect.hash) || form_hash != indirect.hash {
        return invalid(
            "the first digestAlgorithms entry differs from the signed image digest's algorithm (edk2 hashes with the former)".into(),
            None,
            alg,
        );
    }
    let digest = match digests.iter().find(|(a, _)| *a == indirect.hash) {
        Some((_, d)) => d.clone(),
        None => match pe.authenticode_digest(indirect.hash) {
            Ok(d) => {
                digests.push((indirect.hash, d.clone()));
                d
            }
            Err(e) => return invalid(e.to_string(), None, alg),
        },
    };
    if digest != indirect.digest {
        return invalid(
            "the signed image digest differs from the image's: the image was changed after signing"
                .into(),
            None,
            alg,
        );
    }
    let mut last = None;
    for signer in &sd.signers {
        let cert = match sd.verify_signer(signer, indirect.signed_bytes) {
            Ok(c) => c,
            Err(e) => {
                last = Some(invalid(e.to_string(), None, alg));
                continue;
            }
        };
        let path = signer_path(cert, &sd.certificates);
        let chain: Vec<String> = path.iter().map(Cert::subject_name).collect();
        let signer_name = Some(cert.subject_name());
        // A chain to a dbx certificate that the signature does not carry.
        if let Some((_, i)) = build_chain(cert, &sd.certificates, dbx.0) {
            return SignatureReport {
                signer: signer_name,
                chain,
                digest_algorithm: alg,
                outcome: SignatureOutcome::Dbx {
                    dbx_entry: dbx.1[i],
                    certificate: dbx.0[i].subject_name(),
                },
            };
        }
        let outcome = match build_chain(cert, &sd.certificates, db.0) {
            // The anchor itself revoked in dbx: this signature does not allow the
            // image (edk2's IsAllowedByDb), without forbidding it for the others.
            Some((_, i)) => match dbx_list.find_certificate(&db.0[i]) {
                Some(dbx_entry) => SignatureOutcome::Invalid {
                    reason: format!(
                        "its db anchor {:?} is revoked by dbx entry {dbx_entry}",
                        db.0[i].subject_name()
                    ),
                },
                None => SignatureOutcome::Db {
                    db_entry: db.1[i],
                    anchor: db.0[i].subject_name(),
                },
            },
            None => SignatureOutcome::NoChain,
        };
        return SignatureReport {
            signer: signer_name,
            chain,
            digest_algorithm: alg,
            outcome,
        };
    }
    last.unwrap_or_else(|| invalid("no signer".into(), None, alg))
}
