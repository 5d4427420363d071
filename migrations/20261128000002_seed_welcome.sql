-- The seed's "User Registration Welcome Email" flow, so a fresh install shows it working.
INSERT INTO templates (key, channel, published_version) VALUES ('welcome-email', 'email', NULL);
INSERT INTO template_versions (template_key, version, subject, html_body, text_body) VALUES (
    'welcome-email', 1,
    'Welcome to Herald, {{ user.name }}!',
    '<!doctype html><html><body><h1>Welcome, {{ user.name }}!</h1><p>Your account is ready. We are glad to have you.</p></body></html>',
    E'Welcome, {{ user.name }}!\n\nYour account is ready. We are glad to have you.\n'
);
UPDATE templates SET published_version = 1 WHERE key = 'welcome-email';

INSERT INTO event_types (name, description, payload_schema, email_template, recipient_path) VALUES (
    'user.registered',
    'A user created an account.',
    '{
       "type": "object",
       "required": ["user"],
       "properties": {
         "user": {
           "type": "object",
           "required": ["email", "name"],
           "properties": {
             "email": {"type": "string", "minLength": 3},
             "name": {"type": "string", "minLength": 1}
           }
         }
       }
     }'::jsonb,
    'welcome-email',
    'user.email'
);
