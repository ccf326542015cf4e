DROP TABLE directory_opt_outs;
