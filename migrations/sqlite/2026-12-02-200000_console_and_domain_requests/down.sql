DROP TABLE domain_requests;
DROP TABLE console_sessions;
