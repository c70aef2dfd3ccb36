-- Only trials are swept at their end (`trials_due`), so only trials are
-- indexed by it. Every other subscription (a key's, an offer's, a converted
-- trial) no longer adds an entry it is never found by.
DROP INDEX subscriptions_trial_end;
CREATE INDEX subscriptions_trial_end ON subscriptions (end_at) WHERE state = 'TRIAL';
