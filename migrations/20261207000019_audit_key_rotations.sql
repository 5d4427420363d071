-- Every walk of the audit chain first finds the key rotations (secret_key.rotated
-- entries); this keeps that lookup off the rest of the log, so the console's
-- incremental verification still costs only the entries since its checkpoint.
CREATE INDEX audit_log_key_rotations_idx ON audit_log (seq) WHERE action = 'secret_key.rotated';
