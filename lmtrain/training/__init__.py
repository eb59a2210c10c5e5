"""The training loop shared by every task (`fit`), and the pieces it is made of."""
