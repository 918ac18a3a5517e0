"""The offline ``rules`` planner: spatial wording read by small deterministic rules, no model.

``lexicon`` holds the word lists, ``phrases`` reads entity phrases, settings and style words,
``layouts`` holds one function per grid layout rule, ``canvas`` the rules that need layers
(corners, the centre, "a small X on a big Y", "X on a sofa"), and ``planner`` puts them
together.
"""

from __future__ import annotations

from rpg.planners.rules.layouts import Layout
from rpg.planners.rules.planner import RULES, RulesPlanner

__all__ = ["RULES", "Layout", "RulesPlanner"]
