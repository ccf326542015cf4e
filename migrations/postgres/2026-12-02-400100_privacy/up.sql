-- Users who asked to be left out of the directory (POST /_annuaire/account/v1/directory
-- {visible: false}). Kept by user id, apart from their entry, so that the choice survives an
-- unbind and a new bind; searches skip them, administrators see the flag.
CREATE TABLE directory_opt_outs (
    mxid TEXT PRIMARY KEY NOT NULL,
    created_at BIGINT NOT NULL
);
