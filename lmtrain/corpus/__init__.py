"""Raw text in: sources and their readers, cleaning, quality filters, deduplication and the weighted mixture."""
