//! PEM decoding (RFC 7468), shared by certificate bundles, CRLs and cached collateral.

use base64::Engine as _;

/// How text outside the PEM blocks is treated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outside {
    /// Ignored, such as `openssl x509 -text` output around a certificate.
    Ignore,
    /// Only whitespace is allowed (for content from the network).
    Reject,
}

/// The DER contents of every `-----BEGIN {label}-----` block in `text`, in order. A
/// block without its end line or with bad base64 is an error.
pub(crate) fn decode_blocks(
    text: &str,
    label: &str,
    outside: Outside,
) -> Result<Vec<Vec<u8>>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        if outside == Outside::Reject && !rest[..start].trim().is_empty() {
            return Err(format!("text outside the {label} blocks"));
        }
        let body = &rest[start + begin.len()..];
        let Some(len) = body.find(&end) else {
            return Err(format!("{label} block {} has no END line", out.len() + 1));
        };
        let b64: String = body[..len]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("{label} block {}: bad base64: {e}", out.len() + 1))?;
        out.push(der);
        rest = &body[len + end.len()..];
    }
    if outside == Outside::Reject && !rest.trim().is_empty() {
        return Err(format!("text outside the {label} blocks"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_in_order_and_errors() {
        let t = "junk\n-----BEGIN X-----\nAAEC\n-----END X-----\n-----BEGIN X-----\nAw==\n-----END X-----";
        assert_eq!(
            decode_blocks(t, "X", Outside::Ignore).unwrap(),
            vec![vec![0, 1, 2], vec![3]]
        );
        assert!(decode_blocks(t, "X", Outside::Reject).is_err());
        assert_eq!(
            decode_blocks(&t[5..], "X", Outside::Reject).unwrap().len(),
            2
        );
        assert!(decode_blocks(t, "Y", Outside::Ignore).unwrap().is_empty());
        assert!(decode_blocks("-----BEGIN X-----\nAAEC", "X", Outside::Ignore).is_err());
        assert!(
            decode_blocks(
                "-----BEGIN X-----\n!!\n-----END X-----",
                "X",
                Outside::Ignore
            )
            .is_err()
        );
    }
}
