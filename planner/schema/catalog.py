"""Typed records for the catalog in ``data/`` (validated when loaded).

Bytes are ``int``; rates carry their unit in the name (``_bytes_per_s``, ``_flops_per_s``).
Vendor "GB" figures stay strings in ``notes``; nothing here is in GiB.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    """Where a record's facts come from and when they were read."""

    source: str = Field(min_length=3)
    as_of: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")


class Gpu(Source):
    """One accelerator model.

    ``usable_memory_bytes`` is what a process can get on the device: the total that
    ``torch.cuda.get_device_properties(i).total_memory`` (equivalently ``cudaMemGetInfo``'s
    total) reports, i.e. the board's memory minus what the driver and ECC keep. The CUDA
    context of our own process is *not* subtracted here: the planner counts it as overhead.
    """

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    name: str
    aliases: list[str] = []
    memory_bytes: int = Field(gt=0, description="Board memory as the driver lists it (MiB * 2**20).")
    usable_memory_bytes: int = Field(gt=0)
    peak_flops_per_s: dict[Literal["fp32", "tf32", "bf16", "fp16", "fp8", "int8"], int] = Field(
        description="Dense (no 2:4 sparsity) tensor-core peak per dtype; bf16/fp16 with fp32 accumulate."
    )
    hbm_bandwidth_bytes_per_s: int = Field(gt=0)
    nvlink_bandwidth_bytes_per_s: int | None = Field(
        default=None, description="Per GPU, one direction; None when GPUs talk over PCIe only."
    )
    pcie_bandwidth_bytes_per_s: int = Field(gt=0, description="Host link, one direction, theoretical.")
    matmul_efficiency: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Maximum achievable matmul FLOPS (best-shape bf16 GEMM) / dense bf16 peak, where measured; "
        "None: the calibration's ``matmul_efficiency_default``.",
    )
    notes: str | None = None

    @model_validator(mode="after")
    def _usable_below_board(self) -> "Gpu":
        if self.usable_memory_bytes > self.memory_bytes:
            raise ValueError(f"{self.id}: usable memory exceeds board memory")
        if "bf16" not in self.peak_flops_per_s and "fp16" not in self.peak_flops_per_s:
            raise ValueError(f"{self.id}: needs a bf16 or fp16 peak")
        return self


class Instance(Source):
    """A cloud machine: GPUs, host memory, links and an on-demand price."""

    id: str = Field(description="The provider's own instance-type name, e.g. p4de.24xlarge.")
    provider: Literal["aws", "gcp", "azure"]
    aliases: list[str] = []
    gpu: str = Field(description="A Gpu.id in data/gpus.json.")
    gpu_count: int = Field(gt=0)
    vcpus: int = Field(gt=0)
    host_memory_bytes: int = Field(gt=0)
    gpu_interconnect: str
    intra_node_bandwidth_bytes_per_s: int | None = Field(
        default=None, description="Per GPU, one direction, GPU-to-GPU inside the node; None for one GPU."
    )
    network_bytes_per_s: int = Field(gt=0, description="Node's network (EFA/InfiniBand/Ethernet), one direction.")
    network: str
    usd_per_hour: float | None = Field(default=None, ge=0)
    price_region: str
    price_as_of: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    notes: str | None = None


class Architecture(BaseModel):
    """A Llama-family decoder, in Hugging Face ``config.json`` field names.

    Unknown fields are ignored (a real ``config.json`` carries many); the ones below are all
    the planner needs. ``name``/``hf_id``/``source`` come from the catalog's ``_catalog`` key
    or, for a user's file, from its path.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    name: str
    hf_id: str | None = None
    aliases: list[str] = []
    source: str | None = None
    model_type: Literal["llama", "mistral", "qwen2"]
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_hidden_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int | None = Field(default=None, gt=0)
    head_dim: int | None = Field(default=None, gt=0)
    vocab_size: int = Field(gt=0)
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    max_position_embeddings: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _shapes_consistent(self) -> "Architecture":
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads} and no head_dim is given"
            )
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of num_key_value_heads {self.kv_heads}")
        return self

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def qkv_bias(self) -> bool:
        """Qwen2 always has q/k/v biases (transformers ``Qwen2Attention``); Llama follows
        ``attention_bias``; Mistral has none."""
        return self.model_type == "qwen2" or (self.model_type == "llama" and self.attention_bias)

    @property
    def o_bias(self) -> bool:
        return self.model_type == "llama" and self.attention_bias
