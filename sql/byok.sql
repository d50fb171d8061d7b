CREATE EXTENSION byok;
SELECT byok_version();
