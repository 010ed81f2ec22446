-- The identity (service-account email) an attempt's job runs as: only a token for it may call
-- back for the attempt. NULL where the validator names none (any allow-listed caller may).
ALTER TABLE attempts ADD COLUMN caller_identity text;
