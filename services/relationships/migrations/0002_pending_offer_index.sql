-- Accepting a delegated-admin offer looks up the PENDING relationship made
-- from it. Through `dar_customer` that read stepped over every relationship
-- the customer ever had (0.18 ms after a few thousand, and growing); this
-- finds the one row.
CREATE INDEX dar_pending_offer ON delegated_admin_relationships (offer_id, customer_tenant_id)
    WHERE state = 'PENDING';
