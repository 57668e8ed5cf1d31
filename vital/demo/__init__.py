"""Offline stand-ins for the demo profile, named for what they are (never the real thing)."""

from vital.demo.claims import agreement, check_claims, extract_claims, gpt_text, style_flags
from vital.demo.heuristic_judge import HeuristicJudge, caption_facts
from vital.demo.simulated_clinician import SimulatedClinician, is_accurate, truth_utility
from vital.demo.template_generator import TemplateGenerator

__all__ = [
    "HeuristicJudge",
    "SimulatedClinician",
    "TemplateGenerator",
    "agreement",
    "caption_facts",
    "check_claims",
    "extract_claims",
    "gpt_text",
    "is_accurate",
    "style_flags",
    "truth_utility",
]
