"""Remote repositories: the read-only server (`butler serve`), its client, and static hosting."""
