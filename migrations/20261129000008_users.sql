-- People who logged in with the identity provider: one row per (issuer, subject),
-- updated at every login. `owner` is what their endpoints are owned by (their team, or
-- user:<subject>). Browser sessions live in tower_sessions.session (created by the
-- session store at start).
CREATE TABLE users (
    issuer        text NOT NULL,
    subject       text NOT NULL,
    email         text,
    name          text,
    roles         text[] NOT NULL,
    team          text,
    owner         text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz NOT NULL,
    PRIMARY KEY (issuer, subject)
);
