//! Requests as Azure Attestation accepts them, turned into verified claims.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;
use serde_json::{Map, Value};
use snp::cert::{AmdCert, parse_bundle};
use snp::lookup;
use snp::report::AttestationReport;
use snp::verify::VerifiedReport;

use crate::error::ApiError;
use crate::nonce::MAX_NONCE_LEN;
use crate::policy::MAX_POLICY_LEN;
use crate::service::Service;
use crate::{AttestationType, claims};
use attest_api::{AttestRequest, SevSnpVmRequest};

/// The largest decoded runtime or init-time data accepted.
pub const MAX_DATA_LEN: usize = 64 * 1024;
/// The largest encoded `report` field accepted.
pub const MAX_REPORT_FIELD_LEN: usize = 128 * 1024;

/// Verified claims and what else the request carried.
#[derive(Debug)]
pub struct Evaluated {
    /// Claims for the policy and the token.
    pub claims: Map<String, Value>,
    /// The (verified, consumed) nonce, if any.
    pub nonce: Option<String>,
    /// A draft policy: the request is a dry run.
    pub draft_policy: Option<String>,
}

const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const URL_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);
const STD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);

/// Decodes base64 in either alphabet, padded or not (clients differ).
pub fn b64_any(field: &str, s: &str) -> Result<Vec<u8>, ApiError> {
    let s = s.trim();
    let r = if s.contains(['+', '/']) {
        STD_LENIENT.decode(s)
    } else {
        URL_LENIENT.decode(s)
    };
    r.map_err(|_| ApiError::bad("malformed_request", format!("{field} is not base64")))
}

/// `runtimeData` / `initTimeData` (the contract's type), decoded and checked by
/// [`DecodeData::decode`].
pub use attest_api::DataField;

/// A decoded runtime/init-time data field.
pub struct Data {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// The parsed JSON when `dataType` is `JSON`.
    pub json: Option<Value>,
    sha384: bool,
}

/// Decoding of a request's data field.
pub trait DecodeData {
    /// Decodes and checks the field.
    fn decode(&self, field: &str) -> Result<Data, ApiError>;
}

impl DecodeData for DataField {
    fn decode(&self, field: &str) -> Result<Data, ApiError> {
        if self.data.len() > MAX_DATA_LEN * 4 / 3 + 4 {
            return Err(ApiError::bad(
                "field_too_large",
                format!("{field} is larger than {MAX_DATA_LEN} bytes"),
            ));
        }
        let bytes = b64_any(field, &self.data)?;
        let json = match self.data_type.as_deref().unwrap_or("Binary") {
            "Binary" | "binary" => None,
            "JSON" | "Json" | "json" => Some(serde_json::from_slice(&bytes).map_err(|_| {
                ApiError::bad(
                    "malformed_request",
                    format!("{field} has dataType JSON but is not JSON"),
                )
            })?),
            other => {
                return Err(ApiError::bad(
                    "malformed_request",
                    format!("{field}.dataType {other:?} is neither Binary nor JSON"),
                ));
            }
        };
        let sha384 = match self.hash_algorithm.as_deref().unwrap_or("SHA256") {
            "SHA256" | "sha256" => false,
            "SHA384" | "sha384" => true,
            other => {
                return Err(ApiError::bad(
                    "malformed_request",
                    format!("{field}.hashAlgorithm {other:?} is neither SHA256 nor SHA384"),
                ));
            }
        };
        Ok(Data {
            bytes,
            json,
            sha384,
        })
    }
}

impl Data {
    /// Whether `report_data` (64 bytes) is the hash of this data, zero-padded.
    pub fn bound_by(&self, report_data: &[u8]) -> bool {
        let (alg, n) = if self.sha384 {
            (&aws_lc_rs::digest::SHA384, 48)
        } else {
            (&aws_lc_rs::digest::SHA256, 32)
        };
        let d = aws_lc_rs::digest::digest(alg, &self.bytes);
        report_data.get(..n) == Some(d.as_ref())
            && report_data
                .get(n..)
                .is_some_and(|t| t.iter().all(|&b| b == 0))
    }
}

#[derive(Debug, Deserialize)]
struct SnpProof {
    #[serde(rename = "SnpReport")]
    snp_report: String,
    #[serde(rename = "VcekCertChain", default)]
    vcek_cert_chain: Option<String>,
}

/// Parses JSON, mapping errors to `malformed_json`.
pub fn parse_json<'a, T: Deserialize<'a>>(what: &str, body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad(
            "malformed_json",
            format!(
                "{what}: {}",
                e.to_string().chars().take(200).collect::<String>()
            ),
        )
    })
}

/// Verifies the claims in `body` for `kind`, attested to `provider`.
pub fn evaluate(
    svc: &Service,
    provider: &str,
    req: AttestRequest,
    peer: Option<std::net::IpAddr>,
) -> Result<Evaluated, ApiError> {
    match req {
        AttestRequest::SevSnpVm(r) => sevsnp(svc, provider, r, peer),
        AttestRequest::AzureGuest(r) => crate::azure::evaluate(svc, provider, r, peer),
    }
}

/// Parses an attestation request of `kind` from its body, with the appraisal's refusal
/// codes (400 `malformed_json`, naming what did not parse).
pub fn parse_request(kind: AttestationType, body: &[u8]) -> Result<AttestRequest, ApiError> {
    Ok(match kind {
        AttestationType::SevSnpVm => AttestRequest::SevSnpVm(parse_json("SevSnpVm request", body)?),
        AttestationType::AzureGuest => {
            AttestRequest::AzureGuest(parse_json("AzureGuest request", body)?)
        }
    })
}

/// The service nonce evidence is held to: the one the request names, which must be
/// the one bound in the evidence (`bound`); or, when the request names none, a bound
/// value that has a service nonce's shape. Either is checked (issued for `provider`,
/// unexpired, unused) and used up when a token is issued, so replaying evidence
/// without the request's `nonce` field gets no second token.
pub(crate) fn bound_nonce(
    svc: &Service,
    provider: &str,
    requested: Option<&str>,
    bound: Option<&str>,
    where_bound: &str,
) -> Result<Option<String>, ApiError> {
    let nonce = match (requested, bound) {
        (Some(r), Some(b)) if r == b => r,
        (Some(_), _) => {
            return Err(ApiError::bad(
                "nonce_not_bound",
                format!("the nonce must appear {where_bound}"),
            ));
        }
        (None, Some(b)) if crate::nonce::looks_like_service_nonce(b) => b,
        (None, _) => return Ok(None),
    };
    svc.check_nonce(provider, nonce)?;
    Ok(Some(nonce.to_owned()))
}

pub(crate) fn check_draft(draft: &Option<String>) -> Result<(), ApiError> {
    if draft.as_ref().is_some_and(|d| d.len() > MAX_POLICY_LEN) {
        return Err(ApiError::bad(
            "field_too_large",
            format!("draftPolicyForAttestation is larger than {MAX_POLICY_LEN} bytes"),
        ));
    }
    Ok(())
}

pub(crate) fn check_nonce_field(nonce: &Option<String>) -> Result<(), ApiError> {
    if nonce.as_ref().is_some_and(|n| n.len() > MAX_NONCE_LEN) {
        return Err(ApiError::bad(
            "field_too_large",
            format!("nonce is longer than {MAX_NONCE_LEN} characters"),
        ));
    }
    Ok(())
}

fn sevsnp(
    svc: &Service,
    provider: &str,
    req: SevSnpVmRequest,
    peer: Option<std::net::IpAddr>,
) -> Result<Evaluated, ApiError> {
    check_draft(&req.draft_policy)?;
    check_nonce_field(&req.nonce)?;
    if req.report.len() > MAX_REPORT_FIELD_LEN {
        return Err(ApiError::bad(
            "field_too_large",
            "report field is too large",
        ));
    }
    let proof_json = b64_any("report", &req.report)?;
    let proof: SnpProof = parse_json("report", &proof_json)?;
    let report_bytes = b64_any("SnpReport", &proof.snp_report)?;
    let chain = proof.vcek_cert_chain.as_deref().filter(|c| !c.is_empty());
    let verified = verify_snp(svc, &report_bytes, chain, peer)?;
    let report = verified.report();
    let mut claims = claims::snp_claims(&verified);
    claims::add_compliance(
        &mut claims,
        svc.reference_value(report.measurement()).as_ref(),
    );

    let runtime = req
        .runtime_data
        .as_ref()
        .map(|d| d.decode("runtimeData"))
        .transpose()?;
    if let Some(rt) = &runtime {
        if !rt.bound_by(report.report_data()) {
            return Err(ApiError::bad(
                "runtime_data_unbound",
                "REPORT_DATA is not the hash of runtimeData (zero-padded)",
            ));
        }
        match &rt.json {
            Some(j) => {
                claims.insert("x-ms-runtime".into(), j.clone());
            }
            None => {
                claims.insert(
                    "x-opencvm-runtime-data".into(),
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .encode(&rt.bytes)
                        .into(),
                );
            }
        }
    }
    if let Some(it) = &req.init_time_data {
        let it = it.decode("initTimeData")?;
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &it.bytes);
        if report.host_data().as_slice() != d.as_ref() {
            return Err(ApiError::bad(
                "inittime_data_unbound",
                "HOST_DATA is not the SHA-256 of initTimeData",
            ));
        }
        if let Some(j) = it.json {
            claims.insert("x-ms-inittime".into(), j);
        }
    }
    let in_runtime = runtime
        .as_ref()
        .and_then(|r| r.json.as_ref())
        .and_then(|j| j.get("nonce"))
        .and_then(Value::as_str);
    let nonce = bound_nonce(
        svc,
        provider,
        req.nonce.as_deref(),
        in_runtime,
        "as \"nonce\" in JSON runtimeData bound by REPORT_DATA",
    )?;
    Ok(Evaluated {
        claims,
        nonce,
        draft_policy: req.draft_policy,
    })
}

/// Parses and verifies an SNP report with the given chain (base64 of a PEM/DER
/// bundle, as `VcekCertChain` carries it) or with collateral from the service's cache,
/// through [`snp::lookup`] (the path `cvm evidence` takes too), and applies the CRL of
/// the chain's ARK. Parsed chains are remembered by the SHA-256 of their encoding: the
/// same VM sends the same chain every time.
pub(crate) fn verify_snp(
    svc: &Service,
    report_bytes: &[u8],
    chain_b64: Option<&str>,
    peer: Option<std::net::IpAddr>,
) -> Result<VerifiedReport, ApiError> {
    let report = AttestationReport::parse(report_bytes)
        .map_err(|e| ApiError::bad("malformed_report", e.to_string()))?;
    let at = svc.evidence_time();
    let cache_key = chain_b64.map(|c| {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, c.as_bytes());
        let mut k = [0u8; 32];
        k.copy_from_slice(d.as_ref());
        k
    });
    let cached = cache_key.as_ref().and_then(|k| svc.cached_chain(k));
    let hit = cached.is_some();
    let parsed = match cached {
        Some(hit) => hit,
        None => {
            let certs: Vec<AmdCert> = match chain_b64 {
                Some(c) => parse_bundle(&b64_any("VcekCertChain", c)?)
                    .map_err(|e| ApiError::bad("malformed_certificate", e.to_string()))?,
                None => Vec::new(),
            };
            // What the lookup would fetch from KDS goes through the service's guard
            // first (misses remembered, fetches capped per client); the lookup then
            // finds it in the cache.
            svc.prefetch(&report, &certs, peer)?;
            let sources = lookup::Sources {
                certs,
                fetcher: svc.fetcher(),
                ..lookup::Sources::default()
            };
            let (vek, chain) = httpd::off_worker(|| lookup::find_chain(&report, &sources))
                .map_err(lookup_error)?;
            std::sync::Arc::new((vek, chain))
        }
    };
    let (vek, chain) = &*parsed;
    let crl_provider = svc.crl_provider();
    let sources = lookup::Sources {
        root_crls: Some(svc.root_crls()),
        crl_provider: Some(&crl_provider),
        fetcher: svc.fetcher(),
        ..lookup::Sources::default()
    };
    let (crls, no_crl) =
        lookup::find_crls(chain, vek.kind(), &sources, at).map_err(lookup_error)?;
    let verified = svc
        .verifier()
        .verify_with_crls(&report, vek, chain, &crls, no_crl, at)
        .map_err(verify_error)?;
    // Only a chain that verified is remembered (the verifier re-checks validity times
    // and CRLs on every use).
    if let (Some(k), false) = (cache_key, hit) {
        svc.cache_chain(k, parsed);
    }
    Ok(verified)
}

fn lookup_error(e: lookup::LookupError) -> ApiError {
    let status = match e {
        lookup::LookupError::Cert { .. } => 400,
        _ => 424,
    };
    ApiError::new(status, e.code(), e.to_string())
}

fn verify_error(e: snp::verify::VerifyError) -> ApiError {
    let status = if e.is_collateral_problem() { 424 } else { 400 };
    ApiError::new(status, e.code(), e.to_string())
}

/// Runs the request parsers on `data` (a fuzz target's entry point): SevSnpVm and
/// AzureGuest bodies down to their nested base64 and JSON, data fields, settings, the
/// contract's other request bodies, and token parsing/verification. Must never panic.
pub fn fuzz_parse(data: &[u8]) {
    if let Ok(req) = serde_json::from_slice::<SevSnpVmRequest>(data) {
        if let Ok(proof) = b64_any("report", &req.report)
            && let Ok(p) = serde_json::from_slice::<SnpProof>(&proof)
        {
            let _ = b64_any("SnpReport", &p.snp_report);
        }
        for d in [&req.runtime_data, &req.init_time_data]
            .into_iter()
            .flatten()
        {
            if let Ok(d) = d.decode("data") {
                let _ = d.bound_by(&[0u8; 64]);
            }
        }
    }
    crate::azure::fuzz_parse(data);
    let _ = serde_json::from_slice::<crate::policy::ProviderSettings>(data);
    // The contract's request bodies, and its answers as a client reads them.
    let _ = serde_json::from_slice::<attest_api::PolicyTestRequest>(data);
    let _ = serde_json::from_slice::<attest_api::PolicyRequest>(data);
    let _ = serde_json::from_slice::<attest_api::ReferenceValueRequest>(data);
    let _ = serde_json::from_slice::<attest_api::AttestResponse>(data);
    let _ = serde_json::from_slice::<attest_api::ErrorResponse>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = b64_any("x", text);
        let _ = crate::jwt::peek(text);
        let _ = crate::jwt::verify(
            text,
            &crate::jwt::Jwks::default(),
            &crate::jwt::VerifyOptions::at(0),
        );
        if let Ok(jwks) = crate::jwt::Jwks::from_json(data) {
            let _ = crate::jwt::verify("e30.e30.e30", &jwks, &crate::jwt::VerifyOptions::at(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(data: &[u8], kind: Option<&str>, hash: Option<&str>) -> DataField {
        DataField {
            data: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data),
            data_type: kind.map(str::to_string),
            hash_algorithm: hash.map(str::to_string),
        }
    }

    #[test]
    fn runtime_data_binding_sha256_and_sha384() {
        let data = br#"{"nonce":"n"}"#;
        let mut rd = [0u8; 64];
        rd[..32]
            .copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref());
        let d256 = field(data, Some("JSON"), None)
            .decode("runtimeData")
            .unwrap();
        assert!(d256.bound_by(&rd));
        assert_eq!(d256.json.unwrap()["nonce"], "n");
        let d384 = field(data, None, Some("SHA384"))
            .decode("runtimeData")
            .unwrap();
        assert!(!d384.bound_by(&rd));
        let mut rd384 = [0u8; 64];
        rd384[..48]
            .copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, data).as_ref());
        assert!(d384.bound_by(&rd384));
        // A non-zero tail is not a binding.
        rd[63] = 1;
        assert!(!field(data, None, None).decode("x").unwrap().bound_by(&rd));
    }

    #[test]
    fn data_field_errors() {
        for (f, code) in [
            (field(b"not json", Some("JSON"), None), "malformed_request"),
            (field(b"x", Some("XML"), None), "malformed_request"),
            (field(b"x", None, Some("MD5")), "malformed_request"),
            (
                DataField {
                    data: "a".repeat(MAX_DATA_LEN * 2),
                    data_type: None,
                    hash_algorithm: None,
                },
                "field_too_large",
            ),
            (
                DataField {
                    data: "!!!".into(),
                    data_type: None,
                    hash_algorithm: None,
                },
                "malformed_request",
            ),
        ] {
            assert_eq!(f.decode("runtimeData").err().map(|e| e.code), Some(code));
        }
    }

    #[test]
    fn base64_in_either_alphabet() {
        for s in ["-_8", "+/8=", "+/8", "-_8="] {
            assert_eq!(b64_any("x", s).unwrap(), vec![0xfb, 0xff], "{s}");
        }
    }
}
