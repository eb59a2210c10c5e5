"""Token shards: tokenize and pack the mixed corpus (prepare.py, packing.py), and the order training reads them in (sampler.py)."""
