"""The training stack of a plan: which profile (``--stack``, ``data/stacks/*.json``), what it sets
on the spec, and ``--stack auto`` from the installed library versions.

A profile sets every behaviour it names on the spec fields that no option and no configuration
file set; an option always wins over its stack. What cannot hold together is refused with one
line: a DeepSpeed setting (a ``--deepspeed`` file, a bucket size) or a ZeRO stage on a stack that
runs without DeepSpeed, a sharding engine other than the one the named stack runs, a torch DDP or
torch AdamW switch on a DeepSpeed stack.

``--stack auto`` reads package metadata only (``importlib.metadata``, no import of torch or
transformers): DeepSpeed installed means the ``deepspeed`` profile, else torchtune's or Lightning's
when installed, else ``hf-trainer``; the transformers version picks the loss path and a
bitsandbytes before 0.43.2 keeps every 4-bit linear's input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from planner import catalog
from planner.errors import PlannerError
from planner.schema.stack import VERSION_PACKAGES, StackProfile

#: Behaviour name -> the ``TrainingSpec`` field it sets (the same name but for ``zero``).
SPEC_FIELD = {"zero": "zero_stage"}
#: The profile each sharding engine implies when ``--stack`` is not given but the engine is
#: (``--sharding``, or an accelerate config's plugin).
BY_SHARDING = {"deepspeed": "deepspeed", "fsdp2": "fsdp2", "fsdp1": "accelerate-fsdp", "ddp": "hf-trainer"}
DEFAULT_STACK = "deepspeed"
_DDP_ONLY = ("ddp_grad_copy",)
_TORCH_OPTIM_ONLY = ("adamw_impl",)


class Resolved(NamedTuple):
    """A request's stack: the profile, the spec fields with its behaviours applied, where each
    behaviour's value came from, and the versions the plan is for."""

    profile: StackProfile
    fields: dict[str, Any]
    sources: dict[str, str]  # behaviour -> its source (the profile's, an option, a file key, auto)
    versions: dict[str, str]
    auto: bool
    named: bool  # --stack given (or auto), or implied by a sharding engine that was given


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text.split("+")[0])[:3])


def installed_versions() -> dict[str, str]:
    """The installed versions of ``VERSION_PACKAGES`` (and torchtune, litgpt, lightning) from
    package metadata; a package that is not installed is left out."""
    from importlib import metadata

    out = {}
    for name in (*VERSION_PACKAGES, "torchtune", "litgpt", "lightning"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def auto_stack(versions: Mapping[str, str]) -> tuple[str, dict[str, tuple[Any, str]]]:
    """The profile and the version-dependent behaviours for the installed ``versions``:
    name, behaviour -> (value, source)."""
    if "deepspeed" in versions:
        name = "deepspeed"
    elif "torchtune" in versions:
        name = "torchtune"
    elif "litgpt" in versions or "lightning" in versions:
        name = "lightning"
    else:
        name = "hf-trainer"
    out: dict[str, tuple[Any, str]] = {}
    tf = versions.get("transformers")
    if tf and name not in ("torchtune", "lightning"):
        v = _version_tuple(tf)
        path = "padded-labels" if v >= (4, 49) else ("shift-fp32-copy" if v >= (4, 46) else "fp32-logits")
        out["loss_path"] = (
            path,
            f"auto: transformers {tf} installed (>=4.49 padded-labels, 4.46-4.48 shift-fp32-copy, <=4.45 fp32-logits)",
        )
    bnb = versions.get("bitsandbytes")
    if bnb:
        out["bnb_keeps_input"] = (
            _version_tuple(bnb) < (0, 43, 2),
            f"auto: bitsandbytes {bnb} installed (MatMul4Bit keeps its input before 0.43.2)",
        )
    return name, out


def resolve_stack(
    stack: str | None,
    fields: dict[str, Any],
    given: Mapping[str, str],
    behaviour_options: Mapping[str, Any],
    deepspeed_file: str | None,
    versions: Mapping[str, str] | None = None,
) -> Resolved:
    """Apply a stack to ``fields`` (spec fields, defaults included). ``given``: spec field ->
    the option or file key that set it; ``behaviour_options``: the behaviour options given
    (field -> value, ``None`` = not given); ``deepspeed_file``: the DeepSpeed config read, if any."""
    auto = stack is not None and stack.strip().lower() == "auto"
    overrides: dict[str, tuple[Any, str]] = {}
    found: dict[str, str] = {}
    if auto:
        found = dict(installed_versions() if versions is None else versions)
        name, overrides = auto_stack(found)
        named = True
    elif stack is not None:
        name, named = stack, True
    elif "sharding" in given:
        name, named = BY_SHARDING[str(fields["sharding"])], fields["sharding"] != "deepspeed"
    else:
        name, named = DEFAULT_STACK, False
    profile = catalog.find_stack(name)
    label = f"--stack {'auto' if auto else profile.name}"
    out = dict(fields)
    sources: dict[str, str] = {}
    engine = profile.value("sharding")
    other_engine = "sharding" in given and fields["sharding"] != engine
    if stack is not None and other_engine and fields["sharding"] not in profile.engines:
        runs = " or ".join([engine, *profile.engines])
        raise PlannerError(
            f"{given['sharding']} {fields['sharding']} contradicts {label}, which runs {runs}; drop one (see `plan list stacks`)"
        )
    for behaviour, b in profile.behaviours.items():
        field = SPEC_FIELD.get(behaviour, behaviour)
        if field in given:
            sources[behaviour] = given[field]
        elif behaviour_options.get(field) is not None:
            out[field] = behaviour_options[field]
            sources[behaviour] = "--" + field.replace("_", "-")
        elif behaviour in overrides:
            out[field], sources[behaviour] = overrides[behaviour]
        else:
            out[field] = b.value
            sources[behaviour] = b.source
    zero_field = SPEC_FIELD.get("zero", "zero")
    if other_engine and zero_field not in given:  # another engine of the stack: its own stage
        out[zero_field] = 3 if str(fields["sharding"]).startswith("fsdp") else 0
        sources["zero"] = f"{given['sharding']} {fields['sharding']} (FULL_SHARD)" if out[zero_field] == 3 else f"{given['sharding']} ddp"
    for field, value in behaviour_options.items():  # behaviours the profile leaves at the spec's default
        if value is not None and field not in sources:
            out[field] = value
            sources[field] = "--" + field.replace("_", "-")
    _check(out, given, behaviour_options, deepspeed_file, label)
    return Resolved(profile, out, sources, found or dict(profile.versions), auto, named)


def _check(
    fields: dict[str, Any], given: Mapping[str, str], behaviour_options: Mapping[str, Any], deepspeed_file: str | None, label: str
) -> None:
    sharding = fields["sharding"]
    if sharding != "deepspeed":
        engine = "torch DDP (no sharding)" if sharding == "ddp" else sharding.upper()
        knobs = sorted(fields.get("deepspeed") or {})
        if deepspeed_file or knobs:
            what = deepspeed_file or "--" + knobs[0].replace("_", "-")
            raise PlannerError(f"{what} is a DeepSpeed setting, but {label} runs {engine}; use --stack deepspeed (or drop it)")
        if sharding == "ddp" and fields["zero_stage"] != 0 and "zero_stage" in given:
            raise PlannerError(
                f"{given['zero_stage']} {fields['zero_stage']}: ZeRO is DeepSpeed's, and {label} runs {engine}; use --stack deepspeed"
            )
        if sharding == "ddp" and fields["offload"] != "none" and "offload" in given:
            raise PlannerError(
                f"{given['offload']} {fields['offload']}: offloading is DeepSpeed's here, and {label} runs {engine}; use --stack deepspeed"
            )
    else:
        for field in (*_DDP_ONLY, *_TORCH_OPTIM_ONLY):
            if behaviour_options.get(field) is not None:
                whose = "torch DDP's" if field in _DDP_ONLY else "torch AdamW's (DeepSpeed steps with its own optimizer)"
                raise PlannerError(
                    f"--{field.replace('_', '-')} is {whose}, but {label} runs DeepSpeed; pick a stack without it (see `plan list stacks`)"
                )


def stack_out(resolved: Resolved, spec: Any) -> dict[str, Any]:
    """The plan's ``stack`` (``schema.plan.StackInfo``) for a spec built on ``resolved``."""
    behaviours = {b: {"value": getattr(spec, SPEC_FIELD.get(b, b)), "source": src} for b, src in resolved.sources.items()}
    p = resolved.profile
    return {"name": p.name, "title": p.title, "auto": resolved.auto, "behaviours": behaviours, "versions": resolved.versions}
