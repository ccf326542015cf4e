DROP TABLE policy_attempts;
DROP TABLE policy_generation;
DROP TABLE policy_rules;
