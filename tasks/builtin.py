"""The three tasks of the CS224N setting as resolved definitions, for code and tests that name them."""

from mtlbench.tasks.registry import find

SST = find("sst")
QUORA = find("quora")
STS = find("sts")
