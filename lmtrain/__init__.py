"""lmtrain: the library behind this repository's entry points (tokenizer/, data_prep/, train.py, generate.py).

Recipe schema, corpus reading and cleaning, tokenizer training, packing, model building,
the training loop and export live here and are unit-tested in tests/.
"""
