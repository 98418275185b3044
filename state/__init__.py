"""Per-user profile state: versioned byte encoding, key-value stores and the user's record."""
