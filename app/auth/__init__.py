"""Access control: API keys with roles (reader < submitter < curator < admin), stored hashed,
checked on every write (and on reads when ``REQUIRE_READ_KEY``), with per-key rate limits."""
