//! Secure Key Release policies: the grammar, the storage envelope and a dry-run
//! evaluator that says which condition failed.
//!
//! The grammar is the one Azure Key Vault / Managed HSM documents for a key's
//! `release_policy`:
//!
//! ```json
//! {
//!   "version": "1.0.0",
//!   "anyOf": [
//!     {
//!       "authority": "https://sharedeus2.eus2.attest.azure.net/",
//!       "allOf": [
//!         { "claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm" },
//!         { "claim": "x-ms-isolation-tee.x-ms-compliance-status", "equals": "azure-compliant-cvm" }
//!       ]
//!     }
//!   ]
//! }
//! ```
//!
//! - The top level is always `anyOf` a list of *authority blocks*; `version` is
//!   `"1.0.0"`, the only version Key Vault defines (anything else, `"1.0"` included, is
//!   refused).
//! - An authority block names the token issuer (`authority`) and has exactly one of
//!   `anyOf` / `allOf`, a non-empty list of conditions.
//! - A condition is either a group (`{"anyOf": [...]}` or `{"allOf": [...]}`, nested at
//!   will up to [`MAX_DEPTH`]) or a claim condition `{"claim": "a.b.c", <operator>: value}`
//!   with exactly one operator among `equals`, `notEquals`, `less`, `lessOrEquals`,
//!   `greater`, `greaterOrEquals` and `exists`.
//!
//! Parsing is strict: unknown keys and operators, empty groups, operands of the wrong
//! type, duplicate JSON keys (when parsing text) and over-limit policies are refused with
//! an error naming the path of the offending element (`anyOf[0].allOf[2]: unknown
//! operator "equal"`). A parsed [`ReleasePolicy`] can therefore only hold a policy that
//! means something.
//!
//! # Evaluation semantics
//!
//! [`ReleasePolicy::evaluate`] considers the authority blocks whose `authority` equals
//! the token's issuer, both compared exactly (case-sensitively) after removing one
//! trailing `/`. The key may be released if any such block's conditions hold. Within a
//! block:
//!
//! - `claim` is a dot-separated path into nested JSON objects of the token's claims.
//!   Each segment is an object member name and may contain any character but `.`
//!   (dashes are common: `x-ms-isolation-tee`). Arrays are not indexed: a path that
//!   reaches an array before its last segment finds nothing. A claim whose value is
//!   JSON `null` is present.
//! - A claim that is missing makes its condition false, for every operator (`notEquals`
//!   included) except `exists: false`, which holds exactly when the claim is missing.
//! - `equals` / `notEquals` compare JSON values: strings exactly (case-sensitively),
//!   numbers numerically (`1` equals `1.0`), booleans as booleans. Because policies in
//!   the wild write boolean claims both as JSON booleans and as strings, the strings
//!   `"true"` and `"false"` (lower case only) also equal the booleans `true` and
//!   `false`, in either direction. Nothing else is coerced: the string `"1"` does not
//!   equal the number `1`. A claim that is an array, object or null is not comparable:
//!   `equals` and `notEquals` are both false for it (a type mismatch), so `notEquals`
//!   cannot be satisfied by handing the vault an unexpected shape.
//! - `less`, `lessOrEquals`, `greater`, `greaterOrEquals` compare the claim (left) with
//!   the operand (right): numbers with numbers, strings with strings (byte-wise
//!   lexicographic order); any other pairing is false and reported as a type mismatch.
//!
//! The [`Decision`] records, for a denial, which authority blocks matched the issuer
//! (or that none did) and, for every claim condition that made its block fail, the path,
//! claim, operator, operand and the value found. Claims are the public contents of an
//! attestation token, so the decision shows them as they are.

use std::cmp::Ordering;
use std::fmt;

use base64::Engine as _;
use serde::Serialize;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Maximum nesting of `anyOf` / `allOf` lists, counting the top-level `anyOf` (1) and an
/// authority block's list (2).
pub const MAX_DEPTH: usize = 8;
/// Maximum number of claim conditions in a policy.
pub const MAX_CONDITIONS: usize = 64;
/// Maximum length of a `claim` path in bytes.
pub const MAX_CLAIM_PATH_LEN: usize = 256;
/// Maximum number of dot-separated segments in a `claim` path.
pub const MAX_CLAIM_SEGMENTS: usize = 16;
/// Maximum length of an `authority` in bytes.
pub const MAX_AUTHORITY_LEN: usize = 2048;
/// Maximum size of a policy's JSON text in bytes.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// The content type Key Vault gives a release policy when none is specified.
pub const DEFAULT_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// The operator names of a claim condition, in the grammar's spelling.
pub const OPERATORS: [&str; 7] = [
    "equals",
    "notEquals",
    "less",
    "lessOrEquals",
    "greater",
    "greaterOrEquals",
    "exists",
];

const ROOT: &str = "(root)";

/// Why a release policy (or its envelope) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The policy text exceeds [`MAX_POLICY_BYTES`].
    #[error("release policy is {size} bytes; the limit is {MAX_POLICY_BYTES}")]
    TooLarge {
        /// Its size (or, for base64url data, a lower bound of it).
        size: usize,
    },
    /// The policy text is not JSON (or repeats a key in an object).
    #[error("release policy is not valid JSON: {0}")]
    NotJson(String),
    /// An object has a key the grammar does not define.
    #[error("{path}: unknown key {key:?}")]
    UnknownKey {
        /// Where (for example `anyOf[0]`).
        path: String,
        /// The key.
        key: String,
    },
    /// A claim condition has an operator the grammar does not define.
    #[error("{path}: unknown operator {name:?} (expected one of {})", OPERATORS.join(", "))]
    UnknownOperator {
        /// Where (for example `anyOf[0].allOf[2]`).
        path: String,
        /// The operator as written.
        name: String,
    },
    /// `version` is not `"1.0.0"`.
    #[error("version: unsupported release policy version {0:?} (expected \"1.0.0\")")]
    UnsupportedVersion(String),
    /// `anyOf` / `allOf` lists nest deeper than [`MAX_DEPTH`].
    #[error("{path}: anyOf/allOf nested deeper than {MAX_DEPTH} levels")]
    TooDeep {
        /// The list that is one level too deep.
        path: String,
    },
    /// More than [`MAX_CONDITIONS`] claim conditions.
    #[error("{path}: more than {MAX_CONDITIONS} claim conditions in the policy")]
    TooManyConditions {
        /// The first condition over the limit.
        path: String,
    },
    /// Any other violation of the grammar.
    #[error("{path}: {message}")]
    Invalid {
        /// Where.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The `release_policy` envelope (`contentType`, `data`, `immutable`) is malformed.
    #[error("release_policy.{field}: {message}")]
    Envelope {
        /// The envelope member.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl PolicyError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            PolicyError::TooLarge { .. } => "policy_too_large",
            PolicyError::NotJson(_) => "policy_not_json",
            PolicyError::UnknownKey { .. } => "policy_unknown_key",
            PolicyError::UnknownOperator { .. } => "policy_unknown_operator",
            PolicyError::UnsupportedVersion(_) => "policy_unsupported_version",
            PolicyError::TooDeep { .. } => "policy_too_deep",
            PolicyError::TooManyConditions { .. } => "policy_too_many_conditions",
            PolicyError::Invalid { .. } => "policy_invalid",
            PolicyError::Envelope { .. } => "release_policy_invalid",
        }
    }

    fn invalid(path: &str, message: impl Into<String>) -> Self {
        PolicyError::Invalid {
            path: path.to_owned(),
            message: message.into(),
        }
    }

    fn envelope(field: &str, message: impl Into<String>) -> Self {
        PolicyError::Envelope {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// The grammar version a policy declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyVersion {
    /// `"1.0.0"`.
    V1_0_0,
}

impl PolicyVersion {
    /// The version as written in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyVersion::V1_0_0 => "1.0.0",
        }
    }
}

/// Whether a group needs one or all of its conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupKind {
    /// `anyOf`: at least one condition holds.
    AnyOf,
    /// `allOf`: every condition holds.
    AllOf,
}

impl GroupKind {
    /// The key in the grammar (`anyOf` / `allOf`).
    pub fn key(self) -> &'static str {
        match self {
            GroupKind::AnyOf => "anyOf",
            GroupKind::AllOf => "allOf",
        }
    }
}

/// A validated release policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleasePolicy {
    version: PolicyVersion,
    authorities: Vec<AuthorityBlock>,
}

/// One entry of the top-level `anyOf`: the conditions for tokens of one issuer.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorityBlock {
    authority: String,
    group: Group,
}

/// A non-empty `anyOf` / `allOf` list of conditions.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    kind: GroupKind,
    conditions: Vec<Condition>,
}

/// An element of a group.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `{"claim": ..., <operator>: ...}`.
    Claim(ClaimCondition),
    /// `{"anyOf": [...]}` or `{"allOf": [...]}`.
    Group(Group),
}

/// A test of one claim.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimCondition {
    claim: ClaimPath,
    operator: Operator,
}

/// A dot-separated claim path: non-empty segments, no whitespace, control characters
/// or brackets, within [`MAX_CLAIM_PATH_LEN`] and [`MAX_CLAIM_SEGMENTS`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimPath(String);

/// An operand of `equals` / `notEquals`.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// A JSON string.
    String(String),
    /// A JSON number.
    Number(Number),
    /// A JSON boolean.
    Bool(bool),
}

/// An operand of the ordering operators.
#[derive(Debug, Clone, PartialEq)]
pub enum Comparable {
    /// A JSON string (compared byte-wise).
    String(String),
    /// A JSON number.
    Number(Number),
}

/// The operator of a claim condition and its operand.
#[derive(Debug, Clone, PartialEq)]
pub enum Operator {
    /// `equals`.
    Equals(Scalar),
    /// `notEquals`.
    NotEquals(Scalar),
    /// `less`: claim < operand.
    Less(Comparable),
    /// `lessOrEquals`: claim <= operand.
    LessOrEquals(Comparable),
    /// `greater`: claim > operand.
    Greater(Comparable),
    /// `greaterOrEquals`: claim >= operand.
    GreaterOrEquals(Comparable),
    /// `exists`: whether the claim is present.
    Exists(bool),
}

impl Scalar {
    /// As a JSON value.
    pub fn to_value(&self) -> Value {
        match self {
            Scalar::String(s) => Value::String(s.clone()),
            Scalar::Number(n) => Value::Number(n.clone()),
            Scalar::Bool(b) => Value::Bool(*b),
        }
    }
}

impl Comparable {
    /// As a JSON value.
    pub fn to_value(&self) -> Value {
        match self {
            Comparable::String(s) => Value::String(s.clone()),
            Comparable::Number(n) => Value::Number(n.clone()),
        }
    }
}

impl Operator {
    /// The operator's name in the grammar.
    pub fn name(&self) -> &'static str {
        match self {
            Operator::Equals(_) => "equals",
            Operator::NotEquals(_) => "notEquals",
            Operator::Less(_) => "less",
            Operator::LessOrEquals(_) => "lessOrEquals",
            Operator::Greater(_) => "greater",
            Operator::GreaterOrEquals(_) => "greaterOrEquals",
            Operator::Exists(_) => "exists",
        }
    }

    /// The operand as a JSON value.
    pub fn operand(&self) -> Value {
        match self {
            Operator::Equals(s) | Operator::NotEquals(s) => s.to_value(),
            Operator::Less(c)
            | Operator::LessOrEquals(c)
            | Operator::Greater(c)
            | Operator::GreaterOrEquals(c) => c.to_value(),
            Operator::Exists(b) => Value::Bool(*b),
        }
    }
}

impl ClaimPath {
    /// Validates a claim path.
    pub fn new(path: &str) -> Result<Self, String> {
        if path.is_empty() {
            return Err("\"claim\" is empty".into());
        }
        if path.len() > MAX_CLAIM_PATH_LEN {
            return Err(format!(
                "\"claim\" is {} bytes; the limit is {MAX_CLAIM_PATH_LEN}",
                path.len()
            ));
        }
        if let Some(c) = path.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "\"claim\" {path:?} contains whitespace or a control character ({c:?})"
            ));
        }
        if path.contains(['[', ']']) {
            return Err(format!(
                "\"claim\" {path:?}: array indexing is not supported (use dot notation into objects)"
            ));
        }
        let mut segments = 0usize;
        for seg in path.split('.') {
            if seg.is_empty() {
                return Err(format!("\"claim\" {path:?} has an empty segment"));
            }
            segments += 1;
        }
        if segments > MAX_CLAIM_SEGMENTS {
            return Err(format!(
                "\"claim\" {path:?} has {segments} segments; the limit is {MAX_CLAIM_SEGMENTS}"
            ));
        }
        Ok(ClaimPath(path.to_owned()))
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The object member names, outermost first.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }

    /// The value the path names in `claims`, if any.
    pub fn lookup<'a>(&self, claims: &'a Value) -> Option<&'a Value> {
        let mut cur = claims;
        for seg in self.segments() {
            cur = cur.as_object()?.get(seg)?;
        }
        Some(cur)
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ClaimCondition {
    /// The claim tested.
    pub fn claim(&self) -> &ClaimPath {
        &self.claim
    }

    /// The operator and operand.
    pub fn operator(&self) -> &Operator {
        &self.operator
    }

    fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("claim".into(), Value::String(self.claim.0.clone()));
        m.insert(self.operator.name().into(), self.operator.operand());
        Value::Object(m)
    }
}

impl Group {
    /// `anyOf` or `allOf`.
    pub fn kind(&self) -> GroupKind {
        self.kind
    }

    /// The conditions (never empty).
    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn to_value(&self) -> Value {
        Value::Array(
            self.conditions
                .iter()
                .map(|c| match c {
                    Condition::Claim(cc) => cc.to_value(),
                    Condition::Group(g) => {
                        let mut m = Map::new();
                        m.insert(g.kind.key().into(), g.to_value());
                        Value::Object(m)
                    }
                })
                .collect(),
        )
    }
}

impl AuthorityBlock {
    /// The issuer this block applies to, as written.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The block's conditions.
    pub fn group(&self) -> &Group {
        &self.group
    }

    /// Whether this block applies to tokens from `issuer` (exact match after removing one
    /// trailing `/` from each).
    pub fn matches_issuer(&self, issuer: &str) -> bool {
        trim_slash(&self.authority) == trim_slash(issuer)
    }
}

fn trim_slash(s: &str) -> &str {
    s.strip_suffix('/').unwrap_or(s)
}

impl ReleasePolicy {
    /// Parses the policy's JSON text (refusing duplicate keys and texts over
    /// [`MAX_POLICY_BYTES`]).
    pub fn parse(text: &[u8]) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge { size: text.len() });
        }
        let StrictJson(v) =
            serde_json::from_slice(text).map_err(|e| PolicyError::NotJson(e.to_string()))?;
        Self::from_value(&v)
    }

    /// Validates an already-parsed policy document.
    pub fn from_value(v: &Value) -> Result<Self, PolicyError> {
        let obj = v
            .as_object()
            .ok_or_else(|| PolicyError::invalid(ROOT, "a release policy is a JSON object"))?;
        for k in obj.keys() {
            match k.as_str() {
                "version" | "anyOf" => {}
                "allOf" => {
                    return Err(PolicyError::invalid(
                        ROOT,
                        "the top level is \"anyOf\" a list of authority blocks, not \"allOf\"",
                    ));
                }
                _ => {
                    return Err(PolicyError::UnknownKey {
                        path: ROOT.into(),
                        key: k.clone(),
                    });
                }
            }
        }
        let version = match obj.get("version") {
            None => return Err(PolicyError::invalid(ROOT, "missing \"version\"")),
            Some(Value::String(s)) if s == "1.0.0" => PolicyVersion::V1_0_0,
            Some(Value::String(s)) => return Err(PolicyError::UnsupportedVersion(s.clone())),
            Some(_) => return Err(PolicyError::invalid("version", "must be a string")),
        };
        let list = match obj.get("anyOf") {
            None => {
                return Err(PolicyError::invalid(
                    ROOT,
                    "missing \"anyOf\" (the list of authority blocks)",
                ));
            }
            Some(Value::Array(a)) => a,
            Some(_) => {
                return Err(PolicyError::invalid(
                    "anyOf",
                    "must be an array of authority blocks",
                ));
            }
        };
        if list.is_empty() {
            return Err(PolicyError::invalid(
                "anyOf",
                "empty: a policy needs at least one authority block",
            ));
        }
        let mut ctx = ParseCtx { conditions: 0 };
        let authorities = list
            .iter()
            .enumerate()
            .map(|(i, item)| parse_authority(item, &format!("anyOf[{i}]"), &mut ctx))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ReleasePolicy {
            version,
            authorities,
        })
    }

    /// The declared grammar version.
    pub fn version(&self) -> PolicyVersion {
        self.version
    }

    /// The authority blocks (never empty).
    pub fn authorities(&self) -> &[AuthorityBlock] {
        &self.authorities
    }

    /// The policy in normalised JSON form (same meaning; key order and number spelling
    /// may differ from the text it was parsed from).
    pub fn to_value(&self) -> Value {
        let blocks = self
            .authorities
            .iter()
            .map(|b| {
                let mut m = Map::new();
                m.insert("authority".into(), Value::String(b.authority.clone()));
                m.insert(b.group.kind.key().into(), b.group.to_value());
                Value::Object(m)
            })
            .collect();
        let mut m = Map::new();
        m.insert(
            "version".into(),
            Value::String(self.version.as_str().into()),
        );
        m.insert("anyOf".into(), Value::Array(blocks));
        Value::Object(m)
    }

    /// Evaluates the policy for a token from `issuer` carrying `claims` (the token's
    /// payload, a JSON object). See the module documentation for the semantics.
    pub fn evaluate(&self, issuer: &str, claims: &Value) -> Decision {
        let mut matched = Vec::new();
        let mut failures = Vec::new();
        let mut allowed_by: Option<String> = None;
        for (i, block) in self.authorities.iter().enumerate() {
            if !block.matches_issuer(issuer) {
                continue;
            }
            let path = format!("anyOf[{i}]");
            let group_path = format!("{path}.{}", block.group.kind.key());
            let mut local = Vec::new();
            let ok = eval_group(
                &block.group,
                &group_path,
                &block.authority,
                claims,
                &mut local,
            );
            if ok {
                allowed_by.get_or_insert_with(|| path.clone());
            } else {
                failures.extend(local);
            }
            matched.push(AuthorityMatch {
                path,
                authority: block.authority.clone(),
                satisfied: ok,
            });
        }
        let allowed = allowed_by.is_some();
        if allowed {
            failures.clear();
        }
        let reason = if let Some(p) = &allowed_by {
            let auth = matched
                .iter()
                .find(|m| &m.path == p)
                .map(|m| m.authority.as_str())
                .unwrap_or_default();
            format!("authority block {p} ({auth:?}) is satisfied")
        } else if matched.is_empty() {
            let names: Vec<String> = self
                .authorities
                .iter()
                .map(|b| format!("{:?}", b.authority))
                .collect();
            format!(
                "no authority block for issuer {issuer:?} (the policy names {})",
                names.join(", ")
            )
        } else {
            let blocks: Vec<String> = matched
                .iter()
                .map(|m| format!("{} ({:?})", m.path, m.authority))
                .collect();
            format!(
                "the conditions of authority block{} {} for issuer {issuer:?} do not hold",
                if blocks.len() == 1 { "" } else { "s" },
                blocks.join(", ")
            )
        };
        Decision {
            allowed,
            issuer: issuer.to_owned(),
            reason,
            allowed_by,
            matched_authorities: matched,
            failures,
        }
    }
}

struct ParseCtx {
    conditions: usize,
}

fn parse_authority(
    v: &Value,
    path: &str,
    ctx: &mut ParseCtx,
) -> Result<AuthorityBlock, PolicyError> {
    let obj = v.as_object().ok_or_else(|| {
        PolicyError::invalid(
            path,
            "an authority block is an object with \"authority\" and \"anyOf\" or \"allOf\"",
        )
    })?;
    for k in obj.keys() {
        if !matches!(k.as_str(), "authority" | "anyOf" | "allOf") {
            return Err(PolicyError::UnknownKey {
                path: path.to_owned(),
                key: k.clone(),
            });
        }
    }
    let authority = match obj.get("authority") {
        None => return Err(PolicyError::invalid(path, "missing \"authority\"")),
        Some(Value::String(s)) => s,
        Some(_) => return Err(PolicyError::invalid(path, "\"authority\" must be a string")),
    };
    if authority.is_empty() {
        return Err(PolicyError::invalid(path, "\"authority\" is empty"));
    }
    if authority.len() > MAX_AUTHORITY_LEN {
        return Err(PolicyError::invalid(
            path,
            format!("\"authority\" is longer than {MAX_AUTHORITY_LEN} bytes"),
        ));
    }
    if authority
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(PolicyError::invalid(
            path,
            format!("\"authority\" {authority:?} contains whitespace or a control character"),
        ));
    }
    let (kind, list) = one_group(obj, path)?.ok_or_else(|| {
        PolicyError::invalid(
            path,
            "missing \"anyOf\" or \"allOf\" (the block's conditions)",
        )
    })?;
    let group = parse_group(kind, list, &format!("{path}.{}", kind.key()), 2, ctx)?;
    Ok(AuthorityBlock {
        authority: authority.clone(),
        group,
    })
}

/// The single `anyOf` / `allOf` member of `obj`, if any; both is an error.
fn one_group<'a>(
    obj: &'a Map<String, Value>,
    path: &str,
) -> Result<Option<(GroupKind, &'a Value)>, PolicyError> {
    match (obj.get("anyOf"), obj.get("allOf")) {
        (Some(_), Some(_)) => Err(PolicyError::invalid(
            path,
            "has both \"anyOf\" and \"allOf\"; use one and nest the other inside it",
        )),
        (Some(l), None) => Ok(Some((GroupKind::AnyOf, l))),
        (None, Some(l)) => Ok(Some((GroupKind::AllOf, l))),
        (None, None) => Ok(None),
    }
}

fn parse_group(
    kind: GroupKind,
    v: &Value,
    path: &str,
    depth: usize,
    ctx: &mut ParseCtx,
) -> Result<Group, PolicyError> {
    if depth > MAX_DEPTH {
        return Err(PolicyError::TooDeep {
            path: path.to_owned(),
        });
    }
    let list = v.as_array().ok_or_else(|| {
        PolicyError::invalid(
            path,
            format!("\"{}\" must be an array of conditions", kind.key()),
        )
    })?;
    if list.is_empty() {
        return Err(PolicyError::invalid(
            path,
            format!(
                "empty \"{}\": a group needs at least one condition",
                kind.key()
            ),
        ));
    }
    let conditions = list
        .iter()
        .enumerate()
        .map(|(i, c)| parse_condition(c, &format!("{path}[{i}]"), depth, ctx))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Group { kind, conditions })
}

fn parse_condition(
    v: &Value,
    path: &str,
    depth: usize,
    ctx: &mut ParseCtx,
) -> Result<Condition, PolicyError> {
    let obj = v.as_object().ok_or_else(|| {
        PolicyError::invalid(
            path,
            "a condition is an object: {\"claim\": ..., <operator>: ...}, {\"anyOf\": [...]} or {\"allOf\": [...]}",
        )
    })?;
    if obj.contains_key("claim") {
        return parse_claim_condition(obj, path, ctx).map(Condition::Claim);
    }
    if let Some((kind, list)) = one_group(obj, path)? {
        if let Some(k) = obj.keys().find(|k| *k != kind.key()) {
            return Err(PolicyError::UnknownKey {
                path: path.to_owned(),
                key: k.clone(),
            });
        }
        let group = parse_group(
            kind,
            list,
            &format!("{path}.{}", kind.key()),
            depth + 1,
            ctx,
        )?;
        return Ok(Condition::Group(group));
    }
    if obj.keys().any(|k| OPERATORS.contains(&k.as_str())) {
        return Err(PolicyError::invalid(path, "missing \"claim\""));
    }
    match obj.keys().next() {
        Some(k) => Err(PolicyError::UnknownKey {
            path: path.to_owned(),
            key: k.clone(),
        }),
        None => Err(PolicyError::invalid(
            path,
            "empty condition: expected \"claim\" with an operator, \"anyOf\" or \"allOf\"",
        )),
    }
}

fn parse_claim_condition(
    obj: &Map<String, Value>,
    path: &str,
    ctx: &mut ParseCtx,
) -> Result<ClaimCondition, PolicyError> {
    ctx.conditions += 1;
    if ctx.conditions > MAX_CONDITIONS {
        return Err(PolicyError::TooManyConditions {
            path: path.to_owned(),
        });
    }
    let claim = match obj.get("claim") {
        Some(Value::String(s)) => ClaimPath::new(s).map_err(|m| PolicyError::invalid(path, m))?,
        _ => return Err(PolicyError::invalid(path, "\"claim\" must be a string")),
    };
    let mut ops = Vec::new();
    for (k, v) in obj {
        match k.as_str() {
            "claim" => {}
            "anyOf" | "allOf" => {
                return Err(PolicyError::invalid(
                    path,
                    format!(
                        "a claim condition cannot also have \"{k}\"; nest the claim condition inside it"
                    ),
                ));
            }
            op if OPERATORS.contains(&op) => ops.push((op, v)),
            _ => {
                return Err(PolicyError::UnknownOperator {
                    path: path.to_owned(),
                    name: k.clone(),
                });
            }
        }
    }
    let (name, operand) = match ops.as_slice() {
        [] => {
            return Err(PolicyError::invalid(
                path,
                format!("missing operator (one of {})", OPERATORS.join(", ")),
            ));
        }
        [one] => *one,
        more => {
            let names: Vec<&str> = more.iter().map(|(n, _)| *n).collect();
            return Err(PolicyError::invalid(
                path,
                format!(
                    "more than one operator ({}); a claim condition has exactly one (combine conditions with allOf)",
                    names.join(", ")
                ),
            ));
        }
    };
    let scalar = || -> Result<Scalar, PolicyError> {
        match operand {
            Value::String(s) => Ok(Scalar::String(s.clone())),
            Value::Number(n) => Ok(Scalar::Number(n.clone())),
            Value::Bool(b) => Ok(Scalar::Bool(*b)),
            _ => Err(PolicyError::invalid(
                path,
                format!("the operand of \"{name}\" must be a string, number or boolean"),
            )),
        }
    };
    let comparable = || -> Result<Comparable, PolicyError> {
        match operand {
            Value::String(s) => Ok(Comparable::String(s.clone())),
            Value::Number(n) => Ok(Comparable::Number(n.clone())),
            _ => Err(PolicyError::invalid(
                path,
                format!("the operand of \"{name}\" must be a number or a string"),
            )),
        }
    };
    let operator = match name {
        "equals" => Operator::Equals(scalar()?),
        "notEquals" => Operator::NotEquals(scalar()?),
        "less" => Operator::Less(comparable()?),
        "lessOrEquals" => Operator::LessOrEquals(comparable()?),
        "greater" => Operator::Greater(comparable()?),
        "greaterOrEquals" => Operator::GreaterOrEquals(comparable()?),
        _ => match operand {
            Value::Bool(b) => Operator::Exists(*b),
            _ => {
                return Err(PolicyError::invalid(
                    path,
                    "the operand of \"exists\" must be true or false",
                ));
            }
        },
    };
    Ok(ClaimCondition { claim, operator })
}

// ---------------------------------------------------------------------------------
// Evaluation

/// Why a claim condition did not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FailureReason {
    /// The claim is not in the token.
    Missing,
    /// The claim is there but does not satisfy the operator (for `exists: false`: it is
    /// there).
    Mismatch,
    /// An ordering operator met a claim whose type cannot be compared with the operand
    /// (numbers compare with numbers, strings with strings).
    TypeMismatch,
}

/// A claim condition that made its authority block fail.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionFailure {
    /// The condition's path in the policy (for example `anyOf[0].allOf[1]`).
    pub path: String,
    /// The authority block's `authority`.
    pub authority: String,
    /// The claim path.
    pub claim: String,
    /// The operator's name.
    pub operator: &'static str,
    /// The operand.
    pub expected: Value,
    /// The claim's value in the token (absent when missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<Value>,
    /// Why it failed.
    pub reason: FailureReason,
}

/// An authority block whose `authority` matched the token's issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorityMatch {
    /// The block's path (for example `anyOf[0]`).
    pub path: String,
    /// The block's `authority` as written.
    pub authority: String,
    /// Whether its conditions hold.
    pub satisfied: bool,
}

/// The outcome of [`ReleasePolicy::evaluate`], with an explanation.
///
/// `Display` gives a multi-line human explanation; the `Serialize` form (camelCase)
/// carries the same facts for an API's dry-run response.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Whether the key may be released.
    pub allowed: bool,
    /// The issuer the policy was evaluated for.
    pub issuer: String,
    /// A one-line summary: which block is satisfied, "no authority block for issuer
    /// X", or which blocks' conditions do not hold.
    pub reason: String,
    /// The path of the first authority block whose conditions hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_by: Option<String>,
    /// The authority blocks that matched the issuer (empty: none did).
    pub matched_authorities: Vec<AuthorityMatch>,
    /// For a denial, the claim conditions that made the matched blocks fail (empty when
    /// allowed or when no block matched).
    pub failures: Vec<ConditionFailure>,
}

impl Decision {
    /// The decision as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

const DISPLAY_VALUE_MAX: usize = 200;

fn show_value(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= DISPLAY_VALUE_MAX {
        return s;
    }
    let mut end = DISPLAY_VALUE_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl fmt::Display for ConditionFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: claim {:?} {} {}: ",
            self.path,
            self.claim,
            self.operator,
            show_value(&self.expected)
        )?;
        match (&self.reason, &self.actual) {
            (FailureReason::Missing, _) | (_, None) => f.write_str("claim missing"),
            (FailureReason::Mismatch, Some(a)) => write!(f, "actual {}", show_value(a)),
            (FailureReason::TypeMismatch, Some(a)) => write!(
                f,
                "actual {} is {}, not comparable with {}",
                show_value(a),
                type_name(a),
                type_name(&self.expected)
            ),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            if self.allowed { "allowed" } else { "denied" },
            self.reason
        )?;
        for fail in &self.failures {
            write!(f, "\n  - {fail}")?;
        }
        Ok(())
    }
}

fn eval_group(
    g: &Group,
    path: &str,
    authority: &str,
    claims: &Value,
    out: &mut Vec<ConditionFailure>,
) -> bool {
    // Every condition is evaluated (no short cut) so a denial lists all that failed.
    let mut local = Vec::new();
    let mut any = false;
    let mut all = true;
    for (i, c) in g.conditions.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let ok = match c {
            Condition::Claim(cc) => eval_claim(cc, &p, authority, claims, &mut local),
            Condition::Group(sub) => {
                let sp = format!("{p}.{}", sub.kind.key());
                eval_group(sub, &sp, authority, claims, &mut local)
            }
        };
        any |= ok;
        all &= ok;
    }
    let ok = match g.kind {
        GroupKind::AnyOf => any,
        GroupKind::AllOf => all,
    };
    if !ok {
        out.extend(local);
    }
    ok
}

fn eval_claim(
    cc: &ClaimCondition,
    path: &str,
    authority: &str,
    claims: &Value,
    out: &mut Vec<ConditionFailure>,
) -> bool {
    let actual = cc.claim.lookup(claims);
    match check(&cc.operator, actual) {
        Ok(()) => true,
        Err(reason) => {
            out.push(ConditionFailure {
                path: path.to_owned(),
                authority: authority.to_owned(),
                claim: cc.claim.0.clone(),
                operator: cc.operator.name(),
                expected: cc.operator.operand(),
                actual: actual.cloned(),
                reason,
            });
            false
        }
    }
}

fn check(op: &Operator, actual: Option<&Value>) -> Result<(), FailureReason> {
    let Some(actual) = actual else {
        return match op {
            Operator::Exists(false) => Ok(()),
            _ => Err(FailureReason::Missing),
        };
    };
    let holds = |b: bool| {
        if b {
            Ok(())
        } else {
            Err(FailureReason::Mismatch)
        }
    };
    match op {
        Operator::Exists(want) => holds(*want),
        Operator::Equals(s) => holds(scalar_eq(s, actual)),
        Operator::NotEquals(_)
            if matches!(actual, Value::Array(_) | Value::Object(_) | Value::Null) =>
        {
            Err(FailureReason::TypeMismatch)
        }
        Operator::NotEquals(s) => holds(!scalar_eq(s, actual)),
        Operator::Less(c) => ordering(c, actual).and_then(|o| holds(o == Ordering::Less)),
        Operator::LessOrEquals(c) => {
            ordering(c, actual).and_then(|o| holds(o != Ordering::Greater))
        }
        Operator::Greater(c) => ordering(c, actual).and_then(|o| holds(o == Ordering::Greater)),
        Operator::GreaterOrEquals(c) => {
            ordering(c, actual).and_then(|o| holds(o != Ordering::Less))
        }
    }
}

fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

fn scalar_eq(expected: &Scalar, actual: &Value) -> bool {
    match (expected, actual) {
        (Scalar::String(e), Value::String(a)) => e == a,
        (Scalar::Number(e), Value::Number(a)) => cmp_numbers(a, e) == Some(Ordering::Equal),
        (Scalar::Bool(e), Value::Bool(a)) => e == a,
        (Scalar::Bool(e), Value::String(a)) => a == bool_str(*e),
        (Scalar::String(e), Value::Bool(a)) => e == bool_str(*a),
        _ => false,
    }
}

/// `actual` compared with the operand.
fn ordering(expected: &Comparable, actual: &Value) -> Result<Ordering, FailureReason> {
    match (expected, actual) {
        (Comparable::Number(e), Value::Number(a)) => {
            cmp_numbers(a, e).ok_or(FailureReason::TypeMismatch)
        }
        (Comparable::String(e), Value::String(a)) => Ok(a.as_str().cmp(e.as_str())),
        _ => Err(FailureReason::TypeMismatch),
    }
}

/// Integers compare exactly; anything involving a float compares as `f64`.
fn cmp_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    fn int(n: &Number) -> Option<i128> {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    }
    match (int(a), int(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

// ---------------------------------------------------------------------------------
// The envelope

/// A key's `release_policy` as Key Vault carries it: `{contentType, data, immutable}`,
/// where `data` is the base64url of the policy's JSON text.
///
/// The policy text is kept byte for byte, so what was stored is what is returned.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleasePolicyEnvelope {
    content_type: String,
    immutable: bool,
    data: Vec<u8>,
    policy: ReleasePolicy,
}

fn b64url_lenient() -> base64::engine::GeneralPurpose {
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
}

/// Whether `ct` is `application/json` with at most a UTF-8 charset parameter
/// (case-insensitive, spaces around `;` and `=` allowed).
fn acceptable_content_type(ct: &str) -> bool {
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case("application/json") {
        return false;
    }
    parts.all(|p| {
        let Some((k, v)) = p.split_once('=') else {
            return false;
        };
        let v = v.trim().trim_matches('"');
        k.trim().eq_ignore_ascii_case("charset")
            && (v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8"))
    })
}

impl ReleasePolicyEnvelope {
    /// Wraps a policy's JSON text (validated) with the default content type.
    pub fn new(policy_text: &[u8], immutable: bool) -> Result<Self, PolicyError> {
        let policy = ReleasePolicy::parse(policy_text)?;
        Ok(ReleasePolicyEnvelope {
            content_type: DEFAULT_CONTENT_TYPE.to_owned(),
            immutable,
            data: policy_text.to_vec(),
            policy,
        })
    }

    /// Parses `{"contentType"?, "data", "immutable"?}` (a missing or null `contentType`
    /// is [`DEFAULT_CONTENT_TYPE`], a missing or null `immutable` is false; `data` may be
    /// padded or not) and validates the policy it carries.
    pub fn parse(v: &Value) -> Result<Self, PolicyError> {
        let obj = v.as_object().ok_or_else(|| {
            PolicyError::envelope(
                "(root)",
                "expected an object {\"contentType\", \"data\", \"immutable\"}",
            )
        })?;
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "contentType" | "data" | "immutable"))
        {
            return Err(PolicyError::envelope(k, "unknown member"));
        }
        let content_type = match obj.get("contentType") {
            None | Some(Value::Null) => DEFAULT_CONTENT_TYPE.to_owned(),
            Some(Value::String(s)) if acceptable_content_type(s) => s.clone(),
            Some(Value::String(s)) => {
                return Err(PolicyError::envelope(
                    "contentType",
                    format!("unsupported content type {s:?} (expected {DEFAULT_CONTENT_TYPE:?})"),
                ));
            }
            Some(_) => return Err(PolicyError::envelope("contentType", "must be a string")),
        };
        let immutable = match obj.get("immutable") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(PolicyError::envelope("immutable", "must be a boolean")),
        };
        let encoded = match obj.get("data") {
            None | Some(Value::Null) => {
                return Err(PolicyError::envelope(
                    "data",
                    "missing (the base64url policy)",
                ));
            }
            Some(Value::String(s)) => s,
            Some(_) => return Err(PolicyError::envelope("data", "must be a base64url string")),
        };
        let lower_bound = encoded.len() / 4 * 3;
        if lower_bound > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge { size: lower_bound });
        }
        let data = b64url_lenient()
            .decode(encoded)
            .map_err(|e| PolicyError::envelope("data", format!("not base64url: {e}")))?;
        let policy = ReleasePolicy::parse(&data)?;
        Ok(ReleasePolicyEnvelope {
            content_type,
            immutable,
            data,
            policy,
        })
    }

    /// `{"contentType", "data", "immutable"}` with `data` unpadded base64url of the stored
    /// policy text.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert(
            "contentType".into(),
            Value::String(self.content_type.clone()),
        );
        m.insert(
            "data".into(),
            Value::String(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.data)),
        );
        m.insert("immutable".into(), Value::Bool(self.immutable));
        Value::Object(m)
    }

    /// The content type as given.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// Whether the policy may never be changed.
    pub fn immutable(&self) -> bool {
        self.immutable
    }

    /// The policy's JSON text exactly as stored.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The parsed policy.
    pub fn policy(&self) -> &ReleasePolicy {
        &self.policy
    }
}

// ---------------------------------------------------------------------------------
// JSON that refuses duplicate object keys

/// A JSON value parsed with duplicate object keys refused: `{"equals": "a", "equals":
/// "b"}` must not silently mean the last one.
struct StrictJson(Value);

impl<'de> Deserialize<'de> for StrictJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictJson)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictJson(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(de::Error::custom(format!("duplicate key {k:?}")));
            }
            let StrictJson(v) = map.next_value()?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}
