-- A link's redemption count is counted from `redemptions` when a link is
-- read for display, not kept on the link's row. Keeping it made every
-- redemption of one link update that row: concurrent redemptions of a
-- popular link queued on its row lock on PostgreSQL until their commits.
-- The column always equalled that count.
ALTER TABLE commerce_links DROP COLUMN redemption_count;
