"""How much device memory one rank of ``otaro tune`` needs, from the model's parameter counts.

Everything is float32 (the project tunes float32 master weights; 4 bytes per number).
Per rank, with ``F`` = the number of ranks under FSDP (it shards) and 1 otherwise (DDP and
one process replicate):

* ``weights``     4 x all parameters / F
* ``grads``       4 x trained parameters / F (DDP's buckets are the gradients themselves: views)
* ``optimizer``   AdamW 8, SGD with momentum 4, plain SGD 0 bytes x trained parameters / F
* ``laa``         4 x trained parameters / F (LAA's one delayed-gradient buffer)
* ``fsdp_units``  FSDP only: the unsharded working set, 4 x (the root unit + 3 x the largest block):
                  the block being computed, the next one prefetched, and one block's full gradients
                  before reduce-scatter; the root unit (final norm, and the embedding when it is tied
                  to lm_head) stays gathered for the whole step
* ``quantized``   4 x SEFP-linear parameters: each fake-quantized weight is saved for the backward
                  pass (its STE gradient needs it), full size on every rank, sharded or not
* ``activations`` 4 x tokens per rank x layers x (11 x hidden + 4 x intermediate): what autograd
                  keeps per decoder block (norm inputs/outputs, attention q/k/v/output, the MLP's
                  gate, up, their product), plus 4 x tokens x vocab x 5 for the logits, their
                  log-softmax, the float32 teacher log-probs and the KL terms
* ``teacher``     only when its log-probs do not fit the cache: a frozen model copy, 4 x all / F

With ``--activation-checkpointing`` each block is recomputed in the backward pass: autograd keeps
only every block's input (4 x tokens x layers x hidden), and one block's activations and quantized
weights are live at a time.

Tokens per rank = (global batch / ranks) x seq-len. The activation term is an estimate
(attention kernels and fused ops differ); tests/otaro_export/train/test_memory.py measures
what autograd keeps on a small Llama and checks the estimate against it. Allocator caching,
CUDA context (~0.5-1 GiB) and fragmentation come on top.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

import torch

BYTES = 4  # float32
GIB = 2**30

#: public configurations of the models the paper tunes (parameter counts follow from them)
PRESETS = {
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
    "llama-3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
    ),
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
}


@dataclass(frozen=True)
class ModelShape:
    total: int  # all parameters (a tied embedding / lm_head counted once)
    trained: int  # parameters the run trains (--train-scope)
    sefp_linear: int  # parameters of the fake-quantized linears
    largest_block: int  # parameters of the largest decoder block (one FSDP unit)
    root_unit: int  # parameters FSDP keeps in the root unit (final norm; tied embedding)
    layers: int
    hidden: int
    intermediate: int
    vocab: int


def model_shape(model: torch.nn.Module, train_scope: str = "linears", quantize_lm_head: bool = False) -> ModelShape:
    """Parameter counts of an HF causal LM (a meta-device model is enough)."""
    from otaro_export.convert import select_sefp_linears

    config = model.config
    sefp = select_sefp_linears(model, quantize_lm_head)
    seen: set[int] = set()

    def count(params) -> int:
        n = 0
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        return n

    total = count(model.parameters())
    seen.clear()
    linear = count(p for name in sefp for p in model.get_submodule(name).parameters())
    seen.clear()
    trained = total if train_scope == "all" else linear
    blocks = [m for m in model.modules() if type(m).__name__ in set(getattr(model, "_no_split_modules", None) or ())]
    largest = max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0)
    inside = sum(sum(p.numel() for p in b.parameters()) for b in blocks)
    tied = model.get_input_embeddings().weight is model.get_output_embeddings().weight
    # Untied embeddings are sharded as units of their own (see distributed.shard_model); a tied one stays in the root.
    root = total - inside if tied else total - inside - 2 * model.get_input_embeddings().weight.numel()
    return ModelShape(
        total=total,
        trained=trained,
        sefp_linear=linear,
        largest_block=largest,
        root_unit=root,
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
        vocab=config.vocab_size,
    )


def preset_shape(name: str, train_scope: str = "linears", quantize_lm_head: bool = False) -> ModelShape:
    """The shape of a :data:`PRESETS` model, built on the meta device (no weights, no download)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    config = AutoConfig.for_model("llama", **PRESETS[name])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model_shape(model, train_scope, quantize_lm_head)


@dataclass(frozen=True)
class MemoryEstimate:
    weights: float
    grads: float
    optimizer: float
    laa: float
    fsdp_units: float
    quantized: float
    activations: float
    teacher: float

    @property
    def total(self) -> float:
        return sum(asdict(self).values())

    def describe(self) -> str:
        unit, scale = ("GiB", GIB) if self.total >= GIB else ("MiB", 2**20)
        parts = ", ".join(f"{k} {v / scale:.1f}" for k, v in asdict(self).items() if v)
        return f"{self.total / scale:.1f} {unit} ({parts})"


def estimate(
    shape: ModelShape,
    *,
    world_size: int = 1,
    parallel: str = "ddp",
    optimizer: str = "sgd",
    momentum: float = 0.0,
    laa: bool = True,
    batch_size: int = 4,
    seq_len: int = 256,
    teacher_cached: bool = True,
    activation_checkpointing: bool = False,
) -> MemoryEstimate:
    """Device bytes one rank needs for a step (see the module docstring for each term)."""
    shard = world_size if parallel == "fsdp" else 1
    per_param = {"adamw": 8, "sgd": 4 if momentum else 0}[optimizer]
    tokens = -(-batch_size // world_size) * seq_len
    block = 11 * shape.hidden + 4 * shape.intermediate
    per_token = shape.layers * block + 5 * shape.vocab
    quantized = shape.sefp_linear
    if activation_checkpointing:
        # Kept: each block's input; live: one block's activations and quantized weights, recomputed in backward.
        per_token = shape.layers * shape.hidden + block + 5 * shape.vocab
        quantized = min(shape.sefp_linear, shape.largest_block)
    return MemoryEstimate(
        weights=BYTES * shape.total / shard,
        grads=BYTES * shape.trained / shard,
        optimizer=per_param * shape.trained / shard,
        laa=BYTES * shape.trained / shard if laa else 0.0,
        fsdp_units=BYTES * (shape.root_unit + 3 * shape.largest_block)
        if parallel == "fsdp" and world_size > 1
        else 0.0,
        quantized=BYTES * quantized,
        activations=BYTES * tokens * per_token,
        teacher=0.0 if teacher_cached else BYTES * shape.total / shard,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Device memory per rank of `otaro tune` (float32), from parameter counts."
    )
    parser.add_argument("--preset", choices=list(PRESETS), default="llama-3.2-1b")
    parser.add_argument("--world-size", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--parallel", choices=["ddp", "fsdp"], default="fsdp")
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default="adamw")
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--no-laa", action="store_true")
    parser.add_argument("--batch-size", type=int, default=8, help="global batch")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument(
        "--teacher-copy",
        action="store_true",
        help="the teacher's log-probs exceed the 3 GiB cache (scored tokens x vocab x 2 B): a frozen copy is kept",
    )
    args = parser.parse_args(argv)
    shape = preset_shape(args.preset)
    print(
        f"{args.preset}: {shape.total / 1e9:.3f} B parameters, {shape.trained / 1e9:.3f} B trained (SEFP linears), "
        f"largest block {shape.largest_block / 1e6:.0f} M, root unit {shape.root_unit / 1e6:.0f} M"
    )
    for world in args.world_size:
        est = estimate(
            shape,
            world_size=world,
            parallel=args.parallel,
            optimizer=args.optimizer,
            momentum=args.momentum,
            laa=not args.no_laa,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            activation_checkpointing=args.activation_checkpointing,
            teacher_cached=not args.teacher_copy,
        )
        print(f"  {world} rank(s), {args.parallel}: {est.describe()}")


if __name__ == "__main__":
    main()
