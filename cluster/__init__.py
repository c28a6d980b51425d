"""The driver side: typed recipes, wire types, data, placement, the RL loop and the CLI."""
