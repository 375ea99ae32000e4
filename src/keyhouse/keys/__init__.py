"""Secret keys: minting (shown once), HMAC at rest, the cached authenticator, scopes."""
