-- The notification history's filters, each served by an index that keeps its pages
-- keyset-ordered by the time-ordered notification id (see notifications::read::list).

-- By event type.
CREATE INDEX notifications_event_type_idx ON notifications (event_type, id);

-- By recipient: an email delivery's target is the address.
CREATE INDEX deliveries_email_target_idx ON deliveries (target, notification_id) WHERE channel = 'email';

-- By endpoint: deliveries_endpoint_idx (endpoint_id, created_at) already serves it.

-- By the statuses worth looking for, which are rare (the open ones have deliveries_open_idx).
CREATE INDEX deliveries_unsuccessful_idx ON deliveries (status, notification_id)
    WHERE status IN ('failed', 'cancelled');
