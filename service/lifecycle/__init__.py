"""Models over time: the repository on disk, loading, versions and leases, draining, the memory budget,
polling. The folder is the truth for a model's name and version."""
