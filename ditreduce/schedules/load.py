"""Load and validate schedules: a path, a preset name, a dict or a Schedule. YAML via safe_load only."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .ir import Schedule

PRESET_DIR = Path(__file__).parent / "presets"
MAX_DEPTH = 32        # nesting of a schedule document (the format needs 4)
MAX_BYTES = 1 << 20   # a schedule file larger than this is not a schedule


class StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key repeated in one mapping (YAML's "last wins" hides typos) and
    documents nested deeper than MAX_DEPTH (which would exhaust the recursion limit)."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.constructor.ConstructorError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                        self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


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
    except RecursionError:  # a dict nested thousands deep, built in Python
        raise ScheduleError(f"invalid schedule ({source}): <document>: nested too deeply") from None


def read_yaml(path: Path):
    """The YAML document of a schedule file; every way a file can fail to be one is a ScheduleError."""
    if path.is_dir():
        raise ScheduleError(f"invalid schedule ({path}): is a directory, not a YAML file")
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ScheduleError(f"invalid schedule ({path}): {size} bytes; a schedule is at most {MAX_BYTES}")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScheduleError(f"invalid schedule ({path}): not UTF-8 text (byte {e.start}); is it a binary file?") from None
    except OSError as e:
        raise ScheduleError(f"invalid schedule ({path}): cannot read: {e.strerror or e}") from None
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 — a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ScheduleError(f"invalid schedule ({path}): not valid YAML: {e}") from None
    except RecursionError:
        raise ScheduleError(f"invalid schedule ({path}): nested too deeply") from None


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
        return validate(read_yaml(path), str(path))
    raise ScheduleError(f"schedule must be a path, preset name, dict or Schedule, got {type(spec).__name__}")


def schedule_yaml(schedule: "dict | Schedule", comments: tuple[str, ...] = ()) -> str:
    """A schedule as the YAML text load_schedule reads back, after `# ` comment lines."""
    doc = schedule.model_dump(mode="json", exclude_none=True) if isinstance(schedule, Schedule) else schedule
    return "".join(f"# {line}\n" for line in comments) + yaml.safe_dump(doc, sort_keys=False)


def json_schema() -> str:
    """JSON schema of format version 1, for editors (yaml-language-server)."""
    schema = Schedule.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ditreduce schedule, format version 1"
    return json.dumps(schema, indent=2)
