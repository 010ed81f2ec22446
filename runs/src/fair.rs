//! Fair claims: which due attempts a claim takes when several validators have work waiting.
//!
//! Claims used to take due attempts in due order alone, so a validator with a flood of work
//! held back every other validator's runs until the flood was dispatched. A claim now shares
//! its `limit` between the validators with due work: it asks each database for up to an equal
//! share of each open validator's oldest due attempts, then takes them rank by rank — every
//! validator's oldest first (among those, oldest due first), then every validator's second —
//! so one claim of `n` slots gives each of `k` waiting validators about `n / k` of them, and a
//! validator with less work leaves its unused share to the others in the next round. Within a
//! validator, order stays due order.
//!
//! The planning is plain Rust, written once here; each database only runs the per-round
//! queries (`SKIP LOCKED` on PostgreSQL, inside the write lock on SQLite), with the SQL that
//! lists the validators with due work shared below.

use std::collections::HashMap;

/// The validators that have due work at `$1`, one index probe each (a loose scan of
/// `attempts_pending_by_validator`, not a read of every due row), in id order. The same text
/// runs on PostgreSQL and SQLite.
pub(crate) const VALIDATORS_WITH_DUE_WORK: &str = "WITH RECURSIVE v(id) AS ( \
       SELECT (SELECT validator_id FROM attempts WHERE state = 'pending' AND not_before <= $1 \
               ORDER BY validator_id LIMIT 1) \
       UNION ALL \
       SELECT (SELECT validator_id FROM attempts WHERE state = 'pending' AND not_before <= $1 \
               AND validator_id > v.id ORDER BY validator_id LIMIT 1) \
       FROM v WHERE v.id IS NOT NULL) \
     SELECT id FROM v WHERE id IS NOT NULL";

/// One due attempt a round's query returned.
#[derive(Debug, Clone)]
pub(crate) struct Candidate<Id, Due> {
    /// The attempt.
    pub id: Id,
    /// Its run.
    pub run_id: Id,
    /// Its validator.
    pub validator_id: String,
    /// Its place in due order (`not_before`, `created_at`, `id` as the database sorts them).
    pub due: Due,
}

/// The plan of one claim: the validators still open, what each may still take, and what has
/// been chosen so far.
#[derive(Debug)]
pub(crate) struct FairClaim<Id, Due> {
    limit: usize,
    /// Validators that may have more due work, with how many more each may take (`None`: no cap).
    open: Vec<(String, Option<u32>)>,
    chosen: Vec<Candidate<Id, Due>>,
}

impl<Id: Clone, Due: Ord + Clone> FairClaim<Id, Due> {
    /// A claim of at most `limit` attempts among `validators` (those with due work); `budget`
    /// gives the free slots of each capped validator, and a capped validator absent from it
    /// (its count could not be taken) or with no free slot takes nothing.
    pub(crate) fn new(
        limit: u32,
        validators: Vec<String>,
        caps: &HashMap<String, u32>,
        budget: &HashMap<String, u32>,
    ) -> Self {
        let open = validators
            .into_iter()
            .filter_map(|v| {
                if !caps.contains_key(&v) {
                    return Some((v, None));
                }
                let left = budget.get(&v).copied().unwrap_or(0);
                (left > 0).then_some((v, Some(left)))
            })
            .collect();
        Self {
            limit: limit as usize,
            open,
            chosen: Vec::new(),
        }
    }

    /// What to ask for in the next round: each open validator with how many of its oldest due
    /// attempts (after those already seen) to return. `None` once the claim is full or no
    /// validator is open.
    pub(crate) fn next_round(&self) -> Option<Vec<(String, u32)>> {
        let want = self.limit.saturating_sub(self.chosen.len());
        if want == 0 || self.open.is_empty() {
            return None;
        }
        let share = u32::try_from(want.div_ceil(self.open.len())).unwrap_or(u32::MAX);
        Some(
            self.open
                .iter()
                .map(|(v, left)| (v.clone(), left.map_or(share, |left| left.min(share))))
                .collect(),
        )
    }

    /// Takes what a round returned for `asked`: rank by rank across validators until the claim
    /// is full. A validator that returned fewer than it was asked for has no more due work it
    /// can have (the rest is locked by another claimer, or there is none) and is closed, as is
    /// one whose cap is reached. Returns whether anything was taken.
    pub(crate) fn take(&mut self, asked: &[(String, u32)], rows: Vec<Candidate<Id, Due>>) -> bool {
        let mut by_validator: HashMap<&str, Vec<Candidate<Id, Due>>> = HashMap::new();
        for row in rows {
            let Some((v, _)) = asked.iter().find(|(v, _)| *v == row.validator_id) else {
                continue;
            };
            by_validator.entry(v.as_str()).or_default().push(row);
        }
        let mut queues: Vec<std::vec::IntoIter<Candidate<Id, Due>>> = Vec::new();
        let mut exhausted: Vec<String> = Vec::new();
        for (v, n) in asked {
            let mut rows = by_validator.remove(v.as_str()).unwrap_or_default();
            if rows.len() < *n as usize {
                exhausted.push(v.clone());
            }
            rows.sort_by(|a, b| a.due.cmp(&b.due));
            queues.push(rows.into_iter());
        }
        let before = self.chosen.len();
        while self.chosen.len() < self.limit {
            let mut rank: Vec<Candidate<Id, Due>> =
                queues.iter_mut().filter_map(Iterator::next).collect();
            if rank.is_empty() {
                break;
            }
            rank.sort_by(|a, b| a.due.cmp(&b.due));
            for row in rank {
                if self.chosen.len() == self.limit {
                    break;
                }
                if let Some((_, Some(left))) =
                    self.open.iter_mut().find(|(v, _)| *v == row.validator_id)
                {
                    *left = left.saturating_sub(1);
                }
                self.chosen.push(row);
            }
        }
        self.open
            .retain(|(v, left)| *left != Some(0) && !exhausted.contains(v));
        self.chosen.len() > before
    }

    /// The attempts chosen so far, which a round's query must not return again.
    pub(crate) fn seen(&self) -> impl Iterator<Item = &Id> {
        self.chosen.iter().map(|c| &c.id)
    }

    /// The chosen attempts.
    pub(crate) fn into_chosen(self) -> Vec<Candidate<Id, Due>> {
        self.chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &str, dues: &[u32]) -> Vec<Candidate<u32, u32>> {
        dues.iter()
            .map(|&due| Candidate {
                id: due,
                run_id: due,
                validator_id: v.to_owned(),
                due,
            })
            .collect()
    }

    fn ids(claim: FairClaim<u32, u32>) -> Vec<u32> {
        claim.into_chosen().into_iter().map(|c| c.id).collect()
    }

    #[test]
    fn a_flood_shares_the_claim_with_a_later_validator() {
        let mut claim = FairClaim::new(
            4,
            vec!["a".into(), "b".into()],
            &HashMap::new(),
            &HashMap::new(),
        );
        let asked = claim.next_round().expect("a round");
        assert_eq!(asked, vec![("a".into(), 2), ("b".into(), 2)]);
        // `a` has a flood of old work, `b` one later run: `b` gets in, not after the flood.
        let mut got = rows("a", &[1, 2]);
        got.extend(rows("b", &[100]));
        assert!(claim.take(&asked, got));
        // `b` is exhausted; `a` takes the slot `b` left in the next round.
        let asked = claim.next_round().expect("a second round");
        assert_eq!(asked, vec![("a".into(), 1)]);
        assert!(claim.take(&asked, rows("a", &[3])));
        assert!(claim.next_round().is_none(), "the claim is full");
        assert_eq!(ids(claim), vec![1, 100, 2, 3]);
    }

    #[test]
    fn one_slot_goes_to_the_oldest_head() {
        let mut claim = FairClaim::new(
            1,
            vec!["a".into(), "b".into()],
            &HashMap::new(),
            &HashMap::new(),
        );
        let asked = claim.next_round().expect("a round");
        let mut got = rows("a", &[7]);
        got.extend(rows("b", &[3]));
        claim.take(&asked, got);
        assert_eq!(ids(claim), vec![3]);
    }

    #[test]
    fn caps_bound_a_validators_share_and_close_it() {
        let caps = HashMap::from([("a".to_owned(), 5), ("z".to_owned(), 5)]);
        let budget = HashMap::from([("a".to_owned(), 1)]);
        let mut claim =
            FairClaim::new(10, vec!["a".into(), "b".into(), "z".into()], &caps, &budget);
        let asked = claim.next_round().expect("a round");
        assert_eq!(
            asked,
            vec![("a".into(), 1), ("b".into(), 5)],
            "a capped validator with no counted budget takes nothing"
        );
        let mut got = rows("a", &[1]);
        got.extend(rows("b", &[2, 3, 4, 5, 6]));
        claim.take(&asked, got);
        let asked = claim.next_round().expect("b may have more");
        assert_eq!(asked, vec![("b".into(), 4)], "a is at its cap");
        assert!(!claim.take(&asked, Vec::new()));
        assert!(claim.next_round().is_none());
        assert_eq!(ids(claim), vec![1, 2, 3, 4, 5, 6]);
    }
}
