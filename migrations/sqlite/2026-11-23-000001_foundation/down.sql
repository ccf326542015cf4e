DROP TABLE instance_state;
