"""`aigw`: the command-line client of the management and usage APIs."""
