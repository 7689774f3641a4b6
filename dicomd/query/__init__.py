"""C-FIND: information models, matching as SQL, response identifiers (no I/O)."""
