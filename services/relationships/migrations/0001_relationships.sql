-- Relationships: links, the partner↔customer list, delegated administration,
-- the grant outbox, and service requests. One dialect for SQLite and
-- PostgreSQL: TEXT and BIGINT only.

-- Reseller requests and delegated-admin offers. id is the code's random part.
CREATE TABLE links (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    partner_tenant_id TEXT NOT NULL,
    -- Delegated-admin offers made to one customer only.
    customer_tenant_id TEXT,
    url TEXT NOT NULL,
    email_subject TEXT NOT NULL,
    email_body TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX links_partner ON links (partner_tenant_id, created_at);

-- One row per partner and customer with any relationship: what ListCustomers
-- pages through. name_key and domain_key are the lowercased name and domain
-- in hex, so every backend and collation orders them the same way.
CREATE TABLE partner_customers (
    partner_tenant_id TEXT NOT NULL,
    customer_tenant_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    primary_domain TEXT NOT NULL,
    name_key TEXT NOT NULL,
    domain_key TEXT NOT NULL,
    reseller_request_id TEXT,
    reseller_since BIGINT,
    advisor BIGINT NOT NULL DEFAULT 0,
    partner_of_record BIGINT NOT NULL DEFAULT 0,
    delegated_state TEXT,
    delegated_relationship_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (partner_tenant_id, customer_tenant_id)
);
CREATE INDEX partner_customers_name ON partner_customers (partner_tenant_id, name_key, customer_tenant_id);
CREATE INDEX partner_customers_domain ON partner_customers (partner_tenant_id, domain_key, customer_tenant_id);
CREATE INDEX partner_customers_customer ON partner_customers (customer_tenant_id, partner_tenant_id);

CREATE TABLE delegated_admin_relationships (
    id TEXT PRIMARY KEY,
    partner_tenant_id TEXT NOT NULL,
    customer_tenant_id TEXT NOT NULL,
    state TEXT NOT NULL,
    offer_id TEXT NOT NULL,
    reassigned_to TEXT,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    activated_at BIGINT,
    ended_at BIGINT,
    updated_at BIGINT NOT NULL
);
-- The multi-channel rule, enforced by the database as well as by the code.
CREATE UNIQUE INDEX dar_one_active ON delegated_admin_relationships (customer_tenant_id) WHERE state = 'ACTIVE';
CREATE INDEX dar_partner ON delegated_admin_relationships (partner_tenant_id, id);
CREATE INDEX dar_customer ON delegated_admin_relationships (customer_tenant_id, id);

-- Bumped inside every delegated-admin change to serialise them per customer.
CREATE TABLE customer_locks (
    customer_tenant_id TEXT PRIMARY KEY,
    n BIGINT NOT NULL
);

-- The grant version identity expects: monotonic per partner and customer.
CREATE TABLE grant_versions (
    customer_tenant_id TEXT NOT NULL,
    partner_tenant_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (customer_tenant_id, partner_tenant_id)
);

-- Grant changes not yet acknowledged by identity. Written in the change's own
-- transaction, deleted once ApplyDelegatedGrant answers.
CREATE TABLE grant_outbox (
    id TEXT PRIMARY KEY,
    partner_tenant_id TEXT NOT NULL,
    customer_tenant_id TEXT NOT NULL,
    relationship_id TEXT NOT NULL,
    state TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT NOT NULL
);
CREATE INDEX grant_outbox_due ON grant_outbox (next_attempt_at, id);

CREATE TABLE service_requests (
    id TEXT PRIMARY KEY,
    customer_tenant_id TEXT NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    state TEXT NOT NULL,
    created_by_user_id TEXT NOT NULL,
    on_behalf_partner_tenant_id TEXT,
    resolution TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX service_requests_customer ON service_requests (customer_tenant_id, id);
