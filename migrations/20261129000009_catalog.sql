-- An event type's sample payload (validated against its schema), for template previews
-- and for checking that routing's recipient path exists. The seed's welcome flow gets one.
ALTER TABLE event_types ADD COLUMN sample_payload jsonb;
UPDATE event_types SET sample_payload = '{"user": {"name": "Ada", "email": "ada@example.test"}}'::jsonb
WHERE name = 'user.registered' AND sample_payload IS NULL;
