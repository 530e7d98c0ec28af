// implemented by helper
