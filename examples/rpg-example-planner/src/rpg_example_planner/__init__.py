"""An example rpg planner plugin: a list of things becomes a grid of regions."""

from rpg_example_planner.planner import GridPlanner

__all__ = ["GridPlanner"]
