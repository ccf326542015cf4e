DROP TABLE invites;
DROP TABLE association_hashes;
DROP TABLE associations;
DROP TABLE identity_accepted_terms;
DROP TABLE identity_tokens;
DROP TABLE identity_accounts;
