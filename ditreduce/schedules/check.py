"""Selectors of a schedule that select nothing on a captured model: a rule whose `modules:` glob matches no
attention site, a `layout:` override that no site took. Usually a typo or a schedule written for another
model; the run is still valid (those selectors are no-ops), so these are notes, not errors."""
from __future__ import annotations

import fnmatch

from .ir import Schedule


def unused_selectors(schedule: Schedule, sites: list) -> list[str]:
    """Human-readable notes, one per selector of `schedule` that no site in `sites` uses (empty: all used)."""
    modules = [s.module for s in sites]
    notes = []
    for i, rule in enumerate(schedule.rules):
        if rule.modules is not None and not any(fnmatch.fnmatchcase(m, rule.modules) for m in modules):
            notes.append(f"rules[{i}].modules {rule.modules!r} matches no attention site "
                         f"(sites: {_examples(modules)}); the rule never applies")
    lay = schedule.layout
    if lay is not None and not any(s.layout_source == "override" for s in sites):
        where = f" with modules {lay.modules!r}" if lay.modules is not None else ""
        matched = [m for m in modules if lay.modules is None or fnmatch.fnmatchcase(m, lay.modules)]
        why = ("its modules glob matches no site" if not matched else
               "every site it matches had a layout already (an override only serves undecided sites)")
        notes.append(f"layout override{where} (grid {lay.grid}, text_tokens {lay.text_tokens}) is used by no "
                     f"site: {why}")
    return notes


def _examples(modules: list[str], most: int = 3) -> str:
    if not modules:
        return "none"
    shown = ", ".join(modules[:most])
    return shown + (f", ... ({len(modules)} in all)" if len(modules) > most else "")
