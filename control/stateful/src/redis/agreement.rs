//! The majority rule: which master address, if any, a round's sentinel answers support.

use std::net::SocketAddr;

use super::follower::Verdict;

/// What one sentinel said to `SENTINEL get-master-addr-by-name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentinelAnswer {
    /// It names this master.
    Master(SocketAddr),
    /// It does not monitor the master name (a nil answer).
    Unknown,
    /// It could not be asked (unreachable, timeout, error reply).
    Failed,
}

/// The outcome of [`agree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    /// The address a majority of the configured sentinels named.
    pub master: Option<SocketAddr>,
    /// `Ok` with a master, else why there is none.
    pub verdict: Verdict,
    /// Human text when `master` is `None`.
    pub reason: Option<String>,
}

/// Answers needed out of `configured` sentinels: a strict majority, `n / 2 + 1`.
pub fn majority(configured: usize) -> usize {
    configured / 2 + 1
}

/// Trusts an address only when a majority of the `configured` sentinels (not of those
/// that answered) name it. Otherwise: `Unreachable` when none answered, `NoQuorum` when
/// fewer than a majority named any master, `Split` when enough named one but they differ.
pub fn agree(configured: usize, answers: &[SentinelAnswer]) -> Agreement {
    let need = majority(configured);
    let mut counts: Vec<(SocketAddr, usize)> = Vec::new();
    let (mut named, mut unknown) = (0usize, 0usize);
    for answer in answers {
        match answer {
            SentinelAnswer::Master(addr) => {
                named += 1;
                match counts.iter_mut().find(|(a, _)| a == addr) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((*addr, 1)),
                }
            }
            SentinelAnswer::Unknown => unknown += 1,
            SentinelAnswer::Failed => {}
        }
    }
    if let Some((addr, _)) = counts.iter().find(|(_, n)| *n >= need) {
        return Agreement { master: Some(*addr), verdict: Verdict::Ok, reason: None };
    }
    let list = || counts.iter().map(|(a, n)| format!("{a} ({n})")).collect::<Vec<_>>().join(", ");
    let (verdict, reason) = if named == 0 && unknown == 0 {
        (Verdict::Unreachable, format!("none of the {configured} sentinels answered"))
    } else if counts.len() > 1 && named >= need {
        (Verdict::Split, format!("sentinels disagree on the master: {}; {need} of {configured} must agree", list()))
    } else if named == 0 {
        (Verdict::NoQuorum, format!("{unknown} of {configured} sentinels answered and none knows the master name"))
    } else {
        (
            Verdict::NoQuorum,
            format!("only {named} of {configured} sentinels named a master ({}); {need} must agree", list()),
        )
    };
    Agreement { master: None, verdict, reason: Some(reason) }
}
