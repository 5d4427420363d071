-- A template's test send (catalog::test_send): Herald's own event type, so clients
-- cannot post it; its one email carries the chosen version, rendered in advance.
INSERT INTO event_types (name, description, operational) VALUES
    ('template.test', 'A template version sent to one address on request (a test send).', true);
