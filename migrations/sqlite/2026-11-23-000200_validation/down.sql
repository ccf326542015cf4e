DROP TABLE rate_limits;
DROP TABLE mail_outbox;
DROP TABLE validation_sessions;
