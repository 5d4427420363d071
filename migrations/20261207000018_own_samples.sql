-- Herald's own event types get sample payloads (the shapes Herald emits), so the
-- templates that ship with Herald preview in the console with their own sample.
-- Data only: the previous release reads these rows as before.
UPDATE event_types SET sample_payload = '{"endpoint": {"id": "01a25000-0000-7000-8000-000000000000", "url": "https://hooks.example.test/herald"}, "reason": "the receiver answered 410 Gone", "disabled_at": "2026-12-07T12:00:00Z"}'::jsonb
WHERE name = 'endpoint.disabled' AND sample_payload IS NULL;
UPDATE event_types SET sample_payload = '{"endpoint_id": "01a25000-0000-7000-8000-000000000000", "message": "This is a test event from Herald."}'::jsonb
WHERE name = 'webhook.test' AND sample_payload IS NULL;
UPDATE event_types SET sample_payload = '{"delivery_id": "01a25000-0000-7000-8000-000000000001", "notification_id": "01a25000-0000-7000-8000-000000000002", "event_type": "user.registered", "template": {"key": "welcome-email", "version": 1}, "opened_at": "2026-12-07T12:00:00.000Z"}'::jsonb
WHERE name = 'email.opened' AND sample_payload IS NULL;
UPDATE event_types SET sample_payload = '{"delivery_id": "01a25000-0000-7000-8000-000000000001", "notification_id": "01a25000-0000-7000-8000-000000000002", "event_type": "user.registered", "template": {"key": "welcome-email", "version": 1}, "clicked_at": "2026-12-07T12:00:00.000Z", "link": {"index": 0, "url": "https://example.test/start"}}'::jsonb
WHERE name = 'email.clicked' AND sample_payload IS NULL;
UPDATE event_types SET sample_payload = '{"template": "welcome-email", "version": 1}'::jsonb
WHERE name = 'template.test' AND sample_payload IS NULL;
