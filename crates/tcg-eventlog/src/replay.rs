//! Replaying a log into PCR values and comparing them with quoted PCRs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use tpm_quote::{HashAlg, PcrValues};

use crate::log::EventLog;

/// The first quoted PCR that the log does not explain (see [`EventLog::replay_check`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(self))]
pub struct Mismatch {
    /// Bank of the PCR.
    pub alg: HashAlg,
    /// PCR index.
    pub pcr: u32,
    /// The quoted value.
    pub expected: Vec<u8>,
    /// The value the log replays to; `None` if the log cannot be replayed for this bank
    /// (not one of [`EventLog::banks`]).
    pub replayed: Option<Vec<u8>>,
}

fn describe(m: &Mismatch) -> String {
    match &m.replayed {
        Some(replayed) => format!(
            "PCR {} ({}) does not match the event log: quoted {}, log replays to {}",
            m.pcr,
            m.alg,
            hex(&m.expected),
            hex(replayed)
        ),
        None => format!(
            "PCR {} ({}) cannot be checked: the event log has no complete {} bank",
            m.pcr, m.alg, m.alg
        ),
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn aws_algorithm(alg: HashAlg) -> &'static aws_lc_rs::digest::Algorithm {
    match alg {
        HashAlg::Sha1 => &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        HashAlg::Sha256 => &aws_lc_rs::digest::SHA256,
        HashAlg::Sha384 => &aws_lc_rs::digest::SHA384,
        HashAlg::Sha512 => &aws_lc_rs::digest::SHA512,
    }
}

/// `H(old || digest)`.
fn extend(alg: HashAlg, old: &[u8], digest: &[u8]) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(aws_algorithm(alg));
    ctx.update(old);
    ctx.update(digest);
    ctx.finish().as_ref().to_vec()
}

/// The value of a PC Client PCR after `TPM2_Startup`, before any extend: PCRs 17-22
/// (the D-RTM PCRs) are all ones; the others are zero, except that PCR 0 ends in the
/// startup locality when it is not 0.
pub fn initial_pcr_value(alg: HashAlg, pcr: u32, startup_locality: Option<u8>) -> Vec<u8> {
    let len = alg.digest_len();
    if (17..=22).contains(&pcr) {
        return vec![0xff; len];
    }
    let mut value = vec![0u8; len];
    if let (0, Some(locality), Some(last)) = (pcr, startup_locality, value.last_mut()) {
        *last = locality;
    }
    value
}

impl EventLog {
    /// The initial value of PCR `pcr` in bank `alg` for this log (see
    /// [`initial_pcr_value`]; the locality is that of the log's `StartupLocality`
    /// event).
    pub fn initial_value(&self, alg: HashAlg, pcr: u32) -> Vec<u8> {
        initial_pcr_value(alg, pcr, self.startup_locality())
    }

    /// Replays the log for every bank of [`EventLog::banks`]: each PCR starts at its
    /// initial value ([`EventLog::initial_value`]) and every event except
    /// `EV_NO_ACTION` extends it: `PCR = H(PCR || digest)`.
    ///
    /// The result holds the PCRs the log extends, plus PCR 0 when the log has a
    /// `StartupLocality` event. PCRs the log does not mention keep their initial
    /// value, which [`EventLog::replay_check`] takes into account.
    pub fn replay(&self) -> PcrValues {
        let mut pcrs: BTreeMap<(HashAlg, u32), Vec<u8>> = BTreeMap::new();
        for &alg in self.banks() {
            if self.startup_locality().is_some() {
                pcrs.insert((alg, 0), self.initial_value(alg, 0));
            }
            for event in self.events().iter().filter(|e| e.is_extended()) {
                // Every extended event has a digest of every bank (EventLog::banks).
                let Some(digest) = event.digest(alg) else {
                    continue;
                };
                let value = pcrs
                    .entry((alg, event.pcr))
                    .or_insert_with(|| self.initial_value(alg, event.pcr));
                *value = extend(alg, value, digest);
            }
        }
        let mut out = PcrValues::new();
        for ((alg, pcr), value) in pcrs {
            // Cannot fail: pcr <= MAX_PCR (23) and the value has the bank's size.
            let _ = out.insert(alg, pcr, &value);
        }
        out
    }

    /// Checks every PCR in `quoted` against the log: PCRs the log extends must equal
    /// the replayed value, PCRs it never touches must hold their initial value (zero,
    /// or all ones for PCRs 17-22). Returns the first difference, in `quoted`'s order
    /// (bank, then PCR index).
    ///
    /// A quoted PCR of a bank the log cannot be replayed for is a mismatch too. When
    /// the quote covers PCRs that a firmware log does not describe (e.g. PCR 10 with
    /// Linux IMA), pass a subset of the quote (`PcrValues::subset`) or use
    /// [`EventLog::replay_check_logged`].
    pub fn replay_check(&self, quoted: &PcrValues) -> Result<(), Mismatch> {
        self.check(quoted, false)
    }

    /// Like [`EventLog::replay_check`], but skips the quoted PCRs that the log has no
    /// event for (and, for PCR 0, no `StartupLocality` event): every PCR the log has
    /// events for, in every quoted bank, must match.
    ///
    /// Weaker: a quoted PCR the log says nothing about is not checked at all. Facts
    /// read from the log ([`EventLog::boot_facts`]) are still covered, since they come
    /// from events of replayed PCRs; but the caller must make sure the PCRs a claim
    /// relies on are quoted (if the quote has no PCR in common with the log, this
    /// check passes).
    pub fn replay_check_logged(&self, quoted: &PcrValues) -> Result<(), Mismatch> {
        self.check(quoted, true)
    }

    fn check(&self, quoted: &PcrValues, only_logged: bool) -> Result<(), Mismatch> {
        let replayed = self.replay();
        // PCRs with events (in any bank) and PCR 0 if its initial value is logged.
        let mut logged: Vec<u32> = self
            .events()
            .iter()
            .filter(|e| e.is_extended())
            .map(|e| e.pcr)
            .collect();
        if self.startup_locality().is_some() {
            logged.push(0);
        }
        for (alg, pcr, value) in quoted.iter() {
            if only_logged && !logged.contains(&pcr) {
                continue;
            }
            let ours = if self.banks().contains(&alg) {
                Some(
                    replayed
                        .get(alg, pcr)
                        .map_or_else(|| self.initial_value(alg, pcr), <[u8]>::to_vec),
                )
            } else {
                None
            };
            if ours.as_deref() != Some(value) {
                return Err(Mismatch {
                    alg,
                    pcr,
                    expected: value.to_vec(),
                    replayed: ours,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_values() {
        assert_eq!(initial_pcr_value(HashAlg::Sha1, 0, None), vec![0; 20]);
        let mut loc3 = vec![0u8; 32];
        loc3[31] = 3;
        assert_eq!(initial_pcr_value(HashAlg::Sha256, 0, Some(3)), loc3);
        assert_eq!(initial_pcr_value(HashAlg::Sha256, 1, Some(3)), vec![0; 32]);
        assert_eq!(initial_pcr_value(HashAlg::Sha384, 17, None), vec![0xff; 48]);
        assert_eq!(initial_pcr_value(HashAlg::Sha384, 22, None), vec![0xff; 48]);
        assert_eq!(initial_pcr_value(HashAlg::Sha512, 23, None), vec![0; 64]);
    }

    #[test]
    fn extend_is_hash_of_concatenation() {
        let old = [1u8; 32];
        let d = [2u8; 32];
        let mut cat = old.to_vec();
        cat.extend(d);
        assert_eq!(
            extend(HashAlg::Sha256, &old, &d),
            HashAlg::Sha256.digest(&cat)
        );
        for alg in HashAlg::ALL {
            assert_eq!(extend(alg, &[], &[]), alg.digest(&[]));
        }
    }

    #[test]
    fn mismatch_message_names_the_pcr() {
        let m = Mismatch {
            alg: HashAlg::Sha256,
            pcr: 7,
            expected: vec![0xab],
            replayed: Some(vec![0xcd]),
        };
        let s = m.to_string();
        assert!(
            s.contains("PCR 7") && s.contains("ab") && s.contains("cd"),
            "{s}"
        );
        let m = Mismatch {
            replayed: None,
            ..m
        };
        assert!(m.to_string().contains("no complete SHA-256 bank"));
    }
}
