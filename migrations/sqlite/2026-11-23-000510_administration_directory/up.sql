-- Administration of the directory: the statistics count entries per organisation and per
-- homeserver (GROUP BY), and the operators' listing filters by them. These indexes cover both
-- (the counted columns are in them: an index-only scan, no table read).
CREATE INDEX directory_entries_organisation
    ON directory_entries (organisation, visibility, external, active);
CREATE INDEX directory_entries_homeserver
    ON directory_entries (homeserver, visibility, external, active);
