-- Notifications waiting for their feed sequence (PostgreSQL). A change
-- writes its notification here, in its own transaction; the feed sequencer
-- then moves waiting rows into `notifications` in batches, one transaction
-- per batch, one sequencer at a time. So a partner's writers no longer queue
-- on its por_feeds row until their commits, and sequences still commit in
-- order with no gaps.
-- subscription_version orders a subscription's own notifications: a batch
-- takes the lowest versions first, so it never holds a later change of a
-- subscription without the earlier one.
CREATE TABLE notification_outbox (
    id TEXT PRIMARY KEY,
    partner_tenant_id TEXT NOT NULL,
    subscription_version BIGINT NOT NULL,
    kind TEXT NOT NULL,
    subscription TEXT NOT NULL,
    previous_license_count BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX notification_outbox_order ON notification_outbox (subscription_version, created_at, id);
-- A partner's next sequence is now one more than its highest in
-- `notifications` (one numbering writer at a time on both backends), so the
-- counter rows are no longer kept. They always equalled that highest.
DROP TABLE por_feeds;
