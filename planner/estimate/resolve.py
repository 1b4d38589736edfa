"""From option values to a validated ``TrainingSpec``: shared by ``plan`` (every command),
``harness`` and the published-point mappings. Bad input becomes one ``PlannerError`` that names
the option, or the configuration file and key that set it."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from planner.errors import PlannerError
from planner.formulas.params import max_lora_rank
from planner.schema.catalog import Architecture
from planner.schema.spec import TrainingSpec


def option_error(exc: ValidationError, sources: dict[str, str] | None = None) -> PlannerError:
    """A spec validation error as the one-line message naming the option (``--lora-rank: ...``),
    or the file and key it was read from (``adapter_config.json: r: ...``, see ``sources``)."""
    err = exc.errors()[0]
    msg = err["msg"].removeprefix("Value error, ")
    loc = [str(x) for x in err["loc"]]
    field = ".".join(loc[:2]) if loc[:1] == ["deepspeed"] else (loc[0] if loc else "")
    source = (sources or {}).get(field, "")
    if source and not source.startswith("--") and source != "default":
        return PlannerError(f"{source}: {msg}")
    where = "--" + loc[0].replace("_", "-") if loc else ""
    if not loc and sources:  # a rule across settings: say which of them came from files
        read = [f"{k} from {v}" for k, v in sources.items() if v != "default" and not v.startswith("--") and not k.startswith("deepspeed.")]
        if read:
            msg += f" (read: {'; '.join(read)})"
    return PlannerError(f"{where}: {msg}" if where else msg)


def make_spec(
    arch: Architecture, fields: dict[str, Any], method: str, per_node: int, micro_batch: int, sources: dict[str, str] | None = None
) -> TrainingSpec:
    """A validated spec for ``arch`` from the shared option fields, one method, GPU count and
    micro batch; a LoRA rank above the smallest targeted dimension is refused too. ``sources``
    (field -> where it was read) names a configuration file in the error when one set the value."""
    try:
        spec = TrainingSpec.model_validate({**fields, "method": method, "gpus_per_node": per_node, "micro_batch_size": micro_batch})
    except ValidationError as exc:
        raise option_error(exc, sources) from None
    if spec.method != "full":
        limit = max_lora_rank(arch, spec.lora_targets)
        if spec.lora_rank > limit:
            where = (sources or {}).get("lora_rank", "--lora-rank")
            where = "--lora-rank" if where == "default" else where
            raise PlannerError(
                f"{where}: rank {spec.lora_rank} is larger than the smallest targeted layer dimension ({limit}) of {arch.name}"
            )
    return spec


def positive_int(text: str, option: str) -> int:
    """A whole number >= 1 given as text (options that also accept a word such as ``max``)."""
    try:
        value = int(text)
    except ValueError:
        raise PlannerError(f"{option} must be a whole number or 'max' (got {text!r})") from None
    if value < 1:
        raise PlannerError(f"{option} must be at least 1 (got {value})")
    return value


def epoch_tokens(tokens: int | None, samples: int | None, seq_len: int) -> int | None:
    """Tokens of one epoch from ``--dataset-tokens`` or ``--dataset-samples`` (padded to the
    sequence length); None means the plan's default dataset."""
    if tokens is not None and samples is not None:
        raise PlannerError("give --dataset-tokens or --dataset-samples, not both")
    return tokens if tokens is not None else (None if samples is None else samples * seq_len)
