"""Privacy operations on a data directory: delete, export and retain (PIPL Art. 19, 45, 47)."""
