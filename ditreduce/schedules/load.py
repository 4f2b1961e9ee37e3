"""Load and validate schedules: a path, a preset name, a dict or a Schedule. YAML via safe_load only."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .ir import Schedule

PRESET_DIR = Path(__file__).parent / "presets"


from ..errors import ScheduleError  # noqa: F401  (re-exported)


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("IndexRange", "list[int]", "function-before[_parse_range(), union[IndexRange,list[int]]]"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "<document>"


def _format(err: ValidationError, source: str) -> str:
    lines = [f"invalid schedule ({source}):"]
    seen = set()
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p in ("IndexRange",))))
        path = _field_path(loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parent = loc[:-1]
            msg = f"unknown key; allowed keys here: {', '.join(_allowed_keys(parent))}"
        key = (path, msg)
        if key not in seen:
            seen.add(key)
            lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def _allowed_keys(parent: tuple) -> list[str]:
    from . import ir

    model: Any = Schedule
    for part in parent:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            break
        ann = {"rules": ir.Rule, "layout": ir.LayoutOverride, "step_fraction": ir.FractionRange,
               "blocks": ir.IndexRange, "steps": ir.IndexRange}.get(part)
        if ann is None:
            break
        model = ann
    return list(model.model_fields)


def validate(doc: Any, source: str = "dict") -> Schedule:
    if not isinstance(doc, dict):
        raise ScheduleError(f"invalid schedule ({source}): <document>: must be a mapping, got {type(doc).__name__}")
    try:
        return Schedule.model_validate(doc)
    except ValidationError as e:
        raise ScheduleError(_format(e, source)) from None
    except (TypeError, ValueError) as e:  # a validator raised outside pydantic's wrapping
        raise ScheduleError(f"invalid schedule ({source}): {e}") from None


def load_schedule(spec: "str | Path | dict | Schedule") -> Schedule:
    """A Schedule from a YAML path, a preset name (see `presets()`), a dict, or a Schedule."""
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, dict):
        return validate(spec)
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.suffix and (PRESET_DIR / f"{spec}.yaml").exists():
            path = PRESET_DIR / f"{spec}.yaml"
        if not path.exists():
            raise ScheduleError(f"no schedule file {str(spec)!r} and no preset of that name; presets: {', '.join(presets())}")
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ScheduleError(f"invalid schedule ({path}): not valid YAML: {e}") from None
        return validate(doc, str(path))
    raise ScheduleError(f"schedule must be a path, preset name, dict or Schedule, got {type(spec).__name__}")


def json_schema() -> str:
    """JSON schema of format version 1, for editors (yaml-language-server)."""
    schema = Schedule.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ditreduce schedule, format version 1"
    return json.dumps(schema, indent=2)
