"""Plain, naive reference formulations that the fast operators are tested against."""
