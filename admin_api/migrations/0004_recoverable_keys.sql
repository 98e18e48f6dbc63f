-- Recoverable keys (dialects whose contract lists keys in clear): the secret is also kept,
-- encrypted with AES-GCM under KEYSTILE_ENCRYPTION_KEY. And when a key was first used.

ALTER TABLE keys ADD COLUMN secret_ciphertext bytea;
ALTER TABLE keys ADD COLUMN first_used_at timestamptz;
