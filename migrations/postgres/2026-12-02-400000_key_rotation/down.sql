DROP TABLE admin_jwt_secrets;
DROP TABLE retired_signing_keys;
