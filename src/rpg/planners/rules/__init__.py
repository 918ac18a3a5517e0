"""The offline ``rules`` planner: spatial wording read by small deterministic rules, no model.

``lexicon`` holds the word lists, ``phrases`` reads entity phrases, settings and style words,
``layouts`` holds one function per layout rule, and ``planner`` puts them together.
"""

from __future__ import annotations

from rpg.planners.rules.layouts import RULES, Layout
from rpg.planners.rules.planner import RulesPlanner

__all__ = ["RULES", "Layout", "RulesPlanner"]
