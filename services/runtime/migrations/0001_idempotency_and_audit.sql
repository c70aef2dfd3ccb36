-- Kept by the runtime in every service's database.

-- A request_id's first result, replayed to retries.
CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL,
    request_id TEXT NOT NULL,
    method TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (scope, request_id)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Every change a service made, per tenant.
CREATE TABLE audit_events (
    id TEXT PRIMARY KEY,
    seq_time BIGINT NOT NULL,
    tenant_id TEXT NOT NULL,
    actor_kind TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    actor_tenant_id TEXT NOT NULL,
    delegated BIGINT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    result TEXT NOT NULL,
    request_id TEXT NOT NULL,
    trace_id TEXT NOT NULL
);
CREATE INDEX audit_events_tenant ON audit_events (tenant_id, seq_time, id);
