-- Identity: tenants, users, and the delegated grants it enforces.
-- One dialect for SQLite and PostgreSQL: TEXT and BIGINT only.

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    display_name TEXT NOT NULL,
    primary_domain TEXT NOT NULL,
    data_region TEXT NOT NULL,
    profile TEXT NOT NULL,
    authorizations TEXT NOT NULL,
    partner_status TEXT NOT NULL,
    syndication BIGINT NOT NULL,
    version BIGINT NOT NULL,
    -- Bumped to serialise invariant checks (the last global admin) per tenant.
    admin_lock BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX tenants_primary_domain ON tenants (primary_domain);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    -- Lowercased; unique within the instance, deleted users included until purged.
    upn TEXT NOT NULL,
    display_name TEXT NOT NULL,
    company_role TEXT NOT NULL,
    supported_access TEXT NOT NULL,
    blocked BIGINT NOT NULL,
    password_hash TEXT NOT NULL,
    must_change_password BIGINT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE UNIQUE INDEX users_upn ON users (upn);
CREATE INDEX users_tenant_upn ON users (tenant_id, upn);
CREATE INDEX users_deleted_at ON users (deleted_at);

-- Effective delegated administration, pushed by the relationships service.
CREATE TABLE delegated_grants (
    customer_tenant_id TEXT NOT NULL,
    partner_tenant_id TEXT NOT NULL,
    relationship_id TEXT NOT NULL,
    state TEXT NOT NULL,
    version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (customer_tenant_id, partner_tenant_id)
);
