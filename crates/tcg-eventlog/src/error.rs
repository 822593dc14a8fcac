//! The error type of the parsers of this crate.

/// Everything that can be wrong with an event log or a `UEFI_VARIABLE_DATA` structure.
///
/// Every variant carries `offset`: the byte offset, from the start of the parsed input,
/// of the field that was being read when the problem was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is empty.
    #[error("empty event log")]
    Empty,

    /// The whole input is larger than [`crate::MAX_LOG_SIZE`].
    #[error("event log is {got} bytes, at most {max} accepted")]
    InputTooLarge {
        /// Largest accepted size.
        max: usize,
        /// Size of the input.
        got: usize,
    },

    /// The input ended before a field could be read completely.
    #[error("truncated at offset {offset} reading {what}: need {need} bytes, {got} left")]
    Truncated {
        /// Offset of the field.
        offset: usize,
        /// Field being read.
        what: &'static str,
        /// Bytes the field needs.
        need: usize,
        /// Bytes that were left.
        got: usize,
    },

    /// A size or count field is over this crate's bound (or the specification's).
    #[error("{what} at offset {offset} is {got}, at most {max} accepted")]
    TooLarge {
        /// Offset of the field.
        offset: usize,
        /// Field being read.
        what: &'static str,
        /// Largest accepted value.
        max: u64,
        /// Declared value.
        got: u64,
    },

    /// The log has more events than [`crate::MAX_EVENTS`].
    #[error("more than {max} events (event at offset {offset})")]
    TooManyEvents {
        /// Offset of the first event over the bound.
        offset: usize,
        /// Largest accepted number of events, header included.
        max: usize,
    },

    /// The first event is an `EV_NO_ACTION` header whose signature is neither
    /// `"Spec ID Event03"` (crypto-agile) nor `"Spec ID Event00"` (SHA-1 log).
    #[error("unknown header signature {signature:02x?} at offset {offset}")]
    UnknownHeaderSignature {
        /// Offset of the signature.
        offset: usize,
        /// The (up to 16) signature bytes found.
        signature: Vec<u8>,
    },

    /// A field of the header event (`TCG_EfiSpecIDEvent` or its `TCG_PCR_EVENT`) holds
    /// a value the specification does not allow.
    #[error("invalid header field {what} at offset {offset}: {got}")]
    InvalidHeader {
        /// Offset of the field.
        offset: usize,
        /// Field and what was expected.
        what: &'static str,
        /// Value found.
        got: u64,
    },

    /// `TPML_DIGEST_VALUES.count` is 0 or more than the header declared algorithms.
    #[error(
        "digest count {got} at offset {offset} does not fit the {declared} algorithm(s) of the header"
    )]
    DigestCountMismatch {
        /// Offset of the count field.
        offset: usize,
        /// `numberOfAlgorithms` of the header.
        declared: u32,
        /// Count found.
        got: u32,
    },

    /// An event carries a digest of an algorithm that the header did not declare, so its
    /// size is unknown.
    #[error("digest algorithm 0x{alg_id:04x} at offset {offset} was not declared in the header")]
    AlgorithmNotDeclared {
        /// Offset of the `hashAlg` field.
        offset: usize,
        /// The `TPM_ALG_ID` found.
        alg_id: u16,
    },

    /// An event carries two digests of the same algorithm.
    #[error("second digest of algorithm 0x{alg_id:04x} at offset {offset}")]
    DuplicateDigest {
        /// Offset of the `hashAlg` field.
        offset: usize,
        /// The repeated `TPM_ALG_ID`.
        alg_id: u16,
    },

    /// A PCR index over [`crate::MAX_PCR`].
    #[error("PCR index {pcr} at offset {offset} is over {max}", max = crate::MAX_PCR)]
    PcrIndexOutOfRange {
        /// Offset of the `pcrIndex` field.
        offset: usize,
        /// Index found.
        pcr: u32,
    },

    /// A `StartupLocality` `EV_NO_ACTION` event that is malformed or misplaced.
    #[error("invalid StartupLocality event at offset {offset}: {reason}")]
    InvalidStartupLocality {
        /// Offset of the event.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },

    /// Bytes left after a structure that must end there (header event data,
    /// `UEFI_VARIABLE_DATA`).
    #[error("{count} trailing bytes at offset {offset} after {what}")]
    TrailingBytes {
        /// Offset of the first extra byte.
        offset: usize,
        /// Structure that was complete.
        what: &'static str,
        /// Number of extra bytes.
        count: usize,
    },

    /// A UEFI variable name that is not valid UTF-16.
    #[error("variable name at offset {offset} is not valid UTF-16")]
    InvalidVariableName {
        /// Offset of `UnicodeName`.
        offset: usize,
    },
}

impl Error {
    /// The byte offset the error refers to (0 for [`Error::Empty`] and
    /// [`Error::InputTooLarge`]).
    pub fn offset(&self) -> usize {
        match self {
            Self::Empty | Self::InputTooLarge { .. } => 0,
            Self::Truncated { offset, .. }
            | Self::TooLarge { offset, .. }
            | Self::TooManyEvents { offset, .. }
            | Self::UnknownHeaderSignature { offset, .. }
            | Self::InvalidHeader { offset, .. }
            | Self::DigestCountMismatch { offset, .. }
            | Self::AlgorithmNotDeclared { offset, .. }
            | Self::DuplicateDigest { offset, .. }
            | Self::PcrIndexOutOfRange { offset, .. }
            | Self::InvalidStartupLocality { offset, .. }
            | Self::TrailingBytes { offset, .. }
            | Self::InvalidVariableName { offset } => *offset,
        }
    }
}
