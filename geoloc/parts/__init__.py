"""Shared training parts: losses, batch samplers, mined negatives, neighbour lists, the semivariogram,
the feed, CUDA graphs and precision. Any task may use them; they know nothing of Ray or YAML."""
