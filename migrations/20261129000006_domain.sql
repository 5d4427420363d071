-- A webhook delivery names its endpoint by a foreign key instead of by text in
-- `target` (which still holds the endpoint id, as the API shows it): lookups use the
-- index instead of casting `id::text`. Deleting an endpoint keeps its deliveries'
-- history; their endpoint_id becomes NULL, and an open one fails ("the endpoint was
-- deleted") when its attempt comes.
ALTER TABLE deliveries ADD COLUMN endpoint_id uuid REFERENCES endpoints (id) ON DELETE SET NULL;
UPDATE deliveries d SET endpoint_id = e.id
FROM endpoints e
WHERE d.channel = 'webhook' AND d.target = e.id::text;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_endpoint_only_webhook
    CHECK (endpoint_id IS NULL OR channel = 'webhook');
DROP INDEX deliveries_webhook_target_idx;
CREATE INDEX deliveries_endpoint_idx ON deliveries (endpoint_id, created_at) WHERE endpoint_id IS NOT NULL;
