"""Meta-learning of agents' learned components (LPO's drift) by evolution strategies."""
