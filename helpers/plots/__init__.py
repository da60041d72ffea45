"""Every figure the toolkit draws; each function returns a matplotlib Figure and can save it."""
