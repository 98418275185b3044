"""Per-user profile state: versioned byte encoding and key-value stores."""
