-- Fair claims: each validator's due attempts in due order, so a claim can list the validators
-- with due work with one probe each and take a share of each one's oldest.
CREATE INDEX attempts_pending_by_validator ON attempts (validator_id, not_before, created_at, id)
    WHERE state = 'pending';
