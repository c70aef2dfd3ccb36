-- Commerce: links, redemptions, subscriptions, product keys and the
-- partner-of-record feed. One dialect for SQLite and PostgreSQL.

-- Trial invitations and purchase offers. id is the code's random part.
-- lines: "product_id=count" joined by ';' (an offer is immutable).
CREATE TABLE commerce_links (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    partner_tenant_id TEXT NOT NULL,
    lines TEXT NOT NULL,
    include_delegated_admin BIGINT NOT NULL,
    url TEXT NOT NULL,
    redemption_count BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX commerce_links_partner ON commerce_links (partner_tenant_id, kind, created_at, id);

-- One row per link and customer: redeeming a link again answers the first
-- result (response: the encoded RedeemXxxResponse).
CREATE TABLE redemptions (
    link_id TEXT NOT NULL,
    customer_tenant_id TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (link_id, customer_tenant_id)
);

CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    customer_tenant_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    state TEXT NOT NULL,
    source TEXT NOT NULL,
    license_count BIGINT NOT NULL,
    partner_of_record TEXT NOT NULL,
    end_at BIGINT,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX subscriptions_customer ON subscriptions (customer_tenant_id, id);
-- One trial per product per customer, even after it converted or expired.
CREATE UNIQUE INDEX subscriptions_one_trial ON subscriptions (customer_tenant_id, product_id)
    WHERE source = 'TRIAL_INVITATION';
CREATE INDEX subscriptions_trial_end ON subscriptions (state, end_at);

-- Imported keys, by hash only. Claimed exactly once by a conditional update.
CREATE TABLE product_keys (
    key_hash TEXT PRIMARY KEY,
    key_hint TEXT NOT NULL,
    product_id TEXT NOT NULL,
    license_count BIGINT NOT NULL,
    term_days BIGINT NOT NULL,
    imported_at BIGINT NOT NULL,
    redeemed_at BIGINT,
    redeemed_by TEXT,
    partner_tenant_id TEXT,
    subscription_id TEXT
);

-- The partner-of-record feed. last_seq is bumped in the writing transaction,
-- so a partner's sequences commit in order with no gaps (what resuming a
-- stream relies on).
CREATE TABLE por_feeds (
    partner_tenant_id TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);
CREATE TABLE notifications (
    partner_tenant_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    subscription TEXT NOT NULL,
    previous_license_count BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (partner_tenant_id, seq)
);
