-- Bus messages that could not be processed (undecodable), with the reason. The kafka
-- backend sends them to the `<prefix>dead-letter` topic instead.
CREATE TABLE dead_letters (
    id         bigserial PRIMARY KEY,
    topic      text NOT NULL,
    key        text NOT NULL,
    payload    bytea NOT NULL,
    reason     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
