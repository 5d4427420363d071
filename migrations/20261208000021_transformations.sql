-- Webhook transformations: an endpoint's JavaScript handler(webhook), run before each
-- attempt (core/src/transform.rs). A transformation may cancel a delivery: the attempt's
-- outcome is then `cancelled` and nothing is sent.
ALTER TABLE endpoints ADD COLUMN transformation text
    CHECK (transformation IS NULL OR octet_length(transformation) BETWEEN 1 AND 65536);
ALTER TABLE attempts DROP CONSTRAINT attempts_outcome_check;
ALTER TABLE attempts ADD CONSTRAINT attempts_outcome_check
    CHECK (outcome IN ('succeeded', 'transient_failure', 'permanent_failure', 'cancelled'));
