"""Tuning and evaluation data: the user's text/JSONL/HF-datasets directory, or data-free self-distillation.

Every source becomes a list of :class:`Sample`: token ids plus the index of
the first token whose prediction is scored (``target_start``). For chat data
only the answer is scored, the prompt is context; for plain text every next
token is scored.

Data-free default: the FP model answers a fixed list of instructions with
temperature sampling (seeded), and those answers are the training text; the
loss is the KL divergence to the FP model's own next-token distribution, so
nothing but the model is needed. Evaluation uses a disjoint prompt list.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from otaro_export.errors import OtaroError


class DataError(OtaroError, ValueError):
    """A training/evaluation data source is missing, empty or malformed."""


@dataclass(frozen=True)
class Sample:
    ids: tuple[int, ...]
    target_start: int  # first position whose token is a scored target (>= 1)

    def to_json(self) -> dict:
        return {"ids": list(self.ids), "target_start": self.target_start}

    @staticmethod
    def from_json(obj: dict) -> Sample:
        return Sample(tuple(int(i) for i in obj["ids"]), int(obj["target_start"]))


TRAIN_PROMPTS = (
    "Explain why the sky is blue in two sentences.",
    "Write a short poem about the sea.",
    "What is the capital of France, and what is it famous for?",
    "Give me three tips for staying focused while studying.",
    "Summarize the plot of Romeo and Juliet.",
    "How do I boil an egg?",
    "What is photosynthesis?",
    "Write a friendly email inviting a colleague to lunch.",
    "List five fruits that are rich in vitamin C.",
    "Explain what a computer program is to a child.",
    "What are the benefits of regular exercise?",
    "Translate 'good morning, how are you?' into Spanish.",
    "Describe a rainy day in a small town.",
    "What is the difference between weather and climate?",
    "Write a Python function that adds two numbers.",
    "Why do we have seasons on Earth?",
    "Give a short definition of democracy.",
    "What should I pack for a weekend camping trip?",
    "Tell me a fun fact about octopuses.",
    "How does a bicycle stay upright?",
    "Write a haiku about autumn leaves.",
    "What is the Pythagorean theorem?",
    "Suggest a name for a new coffee shop and explain why.",
    "How can I save money on groceries?",
    "Explain what gravity is.",
    "Write a two-sentence horror story.",
    "What are the main parts of a plant cell?",
    "Give me a simple recipe for pancakes.",
    "Why is sleep important for health?",
    "Describe the water cycle.",
    "What is machine learning, in simple terms?",
    "Write a short thank-you note to a teacher.",
    "How many continents are there, and which is the largest?",
    "What are some ways to reduce stress?",
    "Explain how a rainbow forms.",
    "Write the opening line of a mystery novel.",
    "What does a librarian do?",
    "Compare cats and dogs as pets.",
    "What is the boiling point of water at sea level?",
    "Give three reasons to learn a second language.",
    "How do airplanes stay in the air?",
    "Write a short poem about a city at night.",
    "What is the largest ocean on Earth?",
    "Give me a tip for writing a good essay.",
    "Explain what a black hole is.",
    "What causes thunder and lightning?",
    "Write a short motivational message for a friend who failed an exam.",
    "How do bees make honey?",
    "What is the difference between a noun and a verb?",
    "Describe your ideal weekend.",
    "Explain what DNA is in simple words.",
    "How do I make a cup of tea?",
    "What are the three states of matter?",
    "Write a product description for a reusable water bottle.",
    "Why is the ocean salty?",
    "What is the role of the heart in the human body?",
    "Give me five ideas for a birthday party.",
    "Explain the difference between renewable and non-renewable energy.",
    "Write a short dialogue between a customer and a waiter.",
    "What is a prime number? Give two examples.",
    "How does a refrigerator keep food cold?",
    "Tell me about the Great Wall of China.",
    "What are good habits for a healthy morning routine?",
    "Explain what an atom is.",
    "Write a short story about a lost puppy finding its way home.",
    "What is the purpose of a bank?",
    "How do volcanoes form?",
    "Give three tips for learning to play the guitar.",
    "What is the difference between a lake and a sea?",
    "Explain how a simple electric circuit works.",
    "Write a tweet announcing the opening of a bakery.",
    "Why do cats purr?",
    "What is the meaning of the word 'empathy'?",
    "How can I improve my handwriting?",
    "Describe a sunset over the desert.",
    "What did ancient Egyptians build the pyramids for?",
    "Explain what a verb tense is, with examples.",
    "Write a Python function that reverses a string.",
    "What are the planets in our solar system?",
    "How do plants drink water?",
    "Give me a packing list for a beach holiday.",
    "What is the difference between speed and velocity?",
    "Write a short apology message for missing a meeting.",
    "How do fish breathe underwater?",
    "What is a healthy breakfast for a busy person?",
    "Explain what a calendar year is and why we have leap years.",
    "What are the benefits of reading books?",
    "Write a riddle and give its answer.",
    "How does the moon affect the tides?",
    "What is the tallest mountain in the world?",
    "Explain how to multiply two fractions.",
    "Describe the smell of fresh bread.",
    "What are some ways to be kind to the environment?",
    "Write a short speech for a friend's wedding.",
    "Why do we need to drink water?",
    "How does a compass work?",
    "What is the main job of the lungs?",
    "Give me a simple workout I can do at home.",
    "Explain what a noun phrase is.",
    "Write a short letter to your future self.",
    "What is the difference between a frog and a toad?",
    "How do I start learning to code?",
    "What is a constellation?",
    "Explain why ice floats on water.",
    "Write a bedtime story about a sleepy dragon.",
    "What are the colors of the rainbow?",
    "How does recycling help the planet?",
    "Give me a good question to ask at the start of a meeting.",
    "What is an ecosystem?",
    "Explain what happens when you sneeze.",
    "Write a short review of a movie you like.",
    "Why do birds migrate?",
    "What is the difference between a hurricane and a tornado?",
    "How do I calculate the area of a circle?",
    "Describe a busy market in the morning.",
    "What is the purpose of a museum?",
    "Explain how a camera takes a picture.",
    "Write a haiku about snow.",
    "What are some fun things to do on a rainy day?",
    "How do earthquakes happen?",
    "What is a good way to remember new words?",
    "Explain what a budget is and why it helps.",
    "Write a short poem about friendship.",
    "Why is the sun hot?",
    "What is the function of the brain?",
    "Give me three facts about elephants.",
    "Explain the difference between 'their', 'there' and 'they're'.",
    "Write a message to a neighbor asking them to water your plants.",
    "How do clouds form?",
    "What is the role of a doctor?",
    "Explain what a spreadsheet is used for.",
    "Write a short scene set on a train.",
    "What are the main ingredients of pizza?",
    "How does a microwave oven heat food?",
    "Why do we dream?",
    "What is the difference between a city and a village?",
    "Give me tips for a long car journey.",
    "Explain what an election is.",
    "Write a short fable with a moral.",
    "How long does it take light from the sun to reach Earth?",
    "What is a fossil?",
    "Explain how to tie a shoelace.",
    "Describe the sound of the ocean.",
    "What are the benefits of drinking green tea?",
    "Write a SQL query that counts the rows in a table called users.",
    "How do magnets work?",
    "What is the difference between a mammal and a reptile?",
    "Give me a name for a pet turtle and explain it.",
    "Explain why we should wash our hands.",
    "Write a short poem about the moon.",
    "What is the speed of sound, roughly?",
    "How do I make a paper airplane?",
    "What does a firefighter do?",
    "Explain what a map scale is.",
    "Write an encouraging note for someone starting a new job.",
    "Why do some animals hibernate?",
    "What is a sentence? Give an example.",
    "How does a bicycle brake work?",
    "Tell me a fun fact about the human body.",
    "What is the capital of Japan, and what is it known for?",
)

EVAL_PROMPTS = (
    "Explain how vaccines work.",
    "Write a short story about a robot who learns to paint.",
    "What are the causes of the French Revolution?",
    "Give me advice for a job interview.",
    "How does the internet work?",
    "Describe the taste of a lemon to someone who has never had one.",
    "What is the difference between a virus and a bacterium?",
    "Write a limerick about a cat.",
    "Why do leaves change color in the fall?",
    "Explain the rules of chess briefly.",
    "What is inflation in economics?",
    "Plan a one-day trip to the mountains.",
)


def _chat_ids(tokenizer, prompt: str, answer: str | None) -> tuple[list[int], int]:
    """Token ids of a chat turn (prompt, optional answer) and where the answer starts."""
    messages = [{"role": "user", "content": prompt}]
    prompt_ids = _as_ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    if answer is None:
        return prompt_ids, len(prompt_ids)
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    tail = [eos] if eos is not None else []
    return prompt_ids + list(answer_ids) + tail, len(prompt_ids)


def prompt_length(tokenizer, prompt: str) -> int:
    """Tokens of ``prompt`` as a chat turn, generation prompt included (where the answer would start)."""
    return len(_chat_ids(tokenizer, prompt, None)[0])


def _as_ids(encoded) -> list[int]:
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    if isinstance(encoded, torch.Tensor):
        encoded = encoded.reshape(-1).tolist()
    return [int(i) for i in encoded]


@dataclass
class Dropped:
    """Why candidate samples were left out: counts per reason, and the prompt lengths that did not fit."""

    seq_len: int
    counts: Counter = field(default_factory=Counter)
    prompt_lengths: list[int] = field(default_factory=list)  # of samples whose prompt filled --seq-len

    def prompt_too_long(self, prompt_tokens: int) -> None:
        self.counts["prompt"] += 1
        self.prompt_lengths.append(prompt_tokens)

    def describe(self) -> str:
        """One clause per reason, e.g. "3 prompts of 40-52 tokens do not fit --seq-len 32 (raise it above 52)"."""
        parts = []
        if self.counts["prompt"]:
            lo, hi = min(self.prompt_lengths), max(self.prompt_lengths)
            span = f"{lo}" if lo == hi else f"{lo}-{hi}"
            parts.append(
                f"{self.counts['prompt']} prompt(s) of {span} tokens leave no room for an answer within "
                f"--seq-len {self.seq_len} (raise --seq-len above {hi})"
            )
        if self.counts["short"]:
            parts.append(f"{self.counts['short']} record(s) empty or shorter than 2 tokens")
        if self.counts["no_answer"]:
            parts.append(f"{self.counts['no_answer']} record(s) with an empty answer")
        return "; ".join(parts)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _record_to_sample(
    record: dict, tokenizer, seq_len: int, where: str, dropped: Dropped | None = None
) -> list[Sample]:
    dropped = dropped if dropped is not None else Dropped(seq_len)
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
        ids = _as_ids(tokenizer.apply_chat_template(messages, tokenize=True))
        ids = ids[:seq_len]
        if len(ids) < 2:
            dropped.counts["short"] += 1
            return []
        return [Sample(tuple(ids), 1)]
    for prompt_key, answer_key in (("prompt", "response"), ("prompt", "completion"), ("instruction", "output")):
        if prompt_key in record and answer_key in record:
            ids, start = _chat_ids(tokenizer, str(record[prompt_key]), str(record[answer_key]))
            if start >= seq_len:
                dropped.prompt_too_long(start)
                return []
            ids = ids[:seq_len]
            if len(ids) <= start:
                dropped.counts["no_answer"] += 1
                return []
            return [Sample(tuple(ids), max(start, 1))]
    if "text" in record:
        samples = _text_to_samples(str(record["text"]), tokenizer, seq_len)
        if not samples:
            dropped.counts["short"] += 1
        return samples
    raise DataError(
        f"{where}: a record needs a 'text' field, 'messages', or 'prompt' + 'response'/'completion'; "
        f"got keys {sorted(record)}"
    )


def _text_to_samples(text: str, tokenizer, seq_len: int) -> list[Sample]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [
        Sample(tuple(ids[i : i + seq_len]), 1) for i in range(0, len(ids), seq_len) if len(ids[i : i + seq_len]) >= 2
    ]


def _read_jsonl(path: Path) -> list[dict]:
    """JSON Lines; a ``.json`` file holding one JSON array of objects is read too."""
    if path.suffix == ".json":
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            try:
                records = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
            if not all(isinstance(r, dict) for r in records):
                raise DataError(f"{path}: the JSON array must hold objects")
            return records
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: each line must be a JSON object")
            records.append(obj)
    return records


def _read_hf_dataset_dir(path: Path) -> list[dict]:
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        try:
            import datasets
        except ImportError as exc:
            raise DataError(
                f"{path} is a HF datasets directory (save_to_disk); reading it needs the 'datasets' package "
                "(pip install datasets), or export it to JSONL first"
            ) from exc
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        return [dict(r) for r in ds]
    files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json", ".txt"))
    if not files:
        raise DataError(f"{path}: no dataset_info.json and no .jsonl/.json/.txt files inside")
    records: list[dict] = []
    for f in files:
        if f.suffix == ".txt":
            records.append({"text": f.read_text(encoding="utf-8")})
        else:
            records.extend(_read_jsonl(f))
    return records


def load_samples(
    path: str | Path,
    tokenizer,
    seq_len: int = 256,
    max_samples: int | None = None,
    dropped: Dropped | None = None,
) -> list[Sample]:
    """Samples from a ``.txt`` file, a ``.jsonl`` file, or a local HF datasets directory.

    ``dropped`` (optional) collects why records were left out; with no usable sample at all the
    error names the reasons (e.g. prompts that do not fit ``seq_len``).
    """
    if tokenizer is None:
        raise DataError("the model has no tokenizer; text data cannot be tokenized")
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path.is_dir():
        records = _read_hf_dataset_dir(path)
    elif path.suffix in (".jsonl", ".json"):
        records = _read_jsonl(path)
    elif path.suffix in (".txt", ".md", ""):
        records = [{"text": path.read_text(encoding="utf-8")}]
    else:
        raise DataError(f"{path}: unsupported data file type {path.suffix!r} (use .txt, .jsonl or a directory)")
    dropped = dropped if dropped is not None else Dropped(seq_len)
    samples: list[Sample] = []
    for i, record in enumerate(records):
        samples.extend(_record_to_sample(record, tokenizer, seq_len, f"{path} record {i}", dropped))
        if max_samples is not None and len(samples) >= max_samples:
            samples = samples[:max_samples]
            break
    if not samples:
        why = dropped.describe() or "no records"
        raise DataError(f"{path}: no usable samples of {len(records)} record(s): {why}")
    return samples


@torch.no_grad()
def self_distillation_samples(
    model: torch.nn.Module,
    tokenizer,
    num_samples: int,
    max_new_tokens: int = 96,
    seed: int = 0,
    prompts: tuple[str, ...] = TRAIN_PROMPTS,
    temperature: float = 0.7,
    batch_size: int = 8,
    progress: bool = False,
) -> list[Sample]:
    """The FP model's own sampled answers to ``prompts`` (cycled), as chat samples.

    Deterministic for a given seed and model. The answer (not the prompt) is scored.
    """
    if tokenizer is None:
        raise DataError("self-distillation needs the model's tokenizer (to apply its chat template)")
    if num_samples < 1:
        raise DataError(f"num_samples must be >= 1, got {num_samples}")
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    eos = tokenizer.eos_token_id
    prompt_ids = [_chat_ids(tokenizer, prompts[i % len(prompts)], None)[0] for i in range(num_samples)]
    samples: list[Sample] = []
    iterator = range(0, num_samples, batch_size)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="self-distillation data", unit="batch")
    was_training = model.training
    model.eval()
    for start in iterator:
        chunk = prompt_ids[start : start + batch_size]
        samples.extend(_sample_answers(model, chunk, max_new_tokens, temperature, eos, generator, device))
    model.train(was_training)
    return samples


def _sample_answers(model, prompts, max_new_tokens, temperature, eos, generator, device) -> list[Sample]:
    """Temperature sampling with a KV cache, left-padded batch, own generator (reproducible)."""
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    pad = 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], dtype=torch.long, device=device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long, device=device)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    answers: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    past = None
    step_ids, step_pos = ids, position_ids
    for _ in range(max_new_tokens):
        out = model(
            input_ids=step_ids, attention_mask=attention, position_ids=step_pos, past_key_values=past, use_cache=True
        )
        past = out.past_key_values
        probs = torch.softmax(out.logits[:, -1, :].float().cpu() / temperature, dim=-1)
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        for i, token in enumerate(nxt.tolist()):
            if not done[i]:
                answers[i].append(token)
                done[i] = token == eos
        if all(done):
            break
        step_ids = nxt.view(-1, 1).to(device)
        step_pos = step_pos[:, -1:] + 1
        attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
    return [Sample(tuple(p + a), len(p)) for p, a in zip(prompts, answers) if a]


SAMPLES_FORMAT = "otaro-samples/2"


def data_fingerprint(path: str | Path) -> dict:
    """What identifies a data source without reading it all: each file's path, size and mtime."""
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        files = [path] if path.is_file() else []
    listing = [
        [str(f.relative_to(path) if f != path else f.name), f.stat().st_size, f.stat().st_mtime_ns] for f in files
    ]
    return {"path": str(path), "files": hashlib.sha256(json.dumps(listing).encode()).hexdigest()}


def prompts_digest(prompts: tuple[str, ...] = TRAIN_PROMPTS) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()


def save_samples(samples: list[Sample], path: Path, key: dict | None = None) -> None:
    """Write ``samples`` with the ``key`` of settings that produced them (atomically: a kill leaves no half file)."""
    if not samples:
        raise DataError(f"refusing to cache an empty sample list in {path}")
    tmp = path.with_name(f".{path.name}.tmp")
    body = {"format": SAMPLES_FORMAT, "key": key or {}, "samples": [s.to_json() for s in samples]}
    tmp.write_text(json.dumps(body), encoding="utf-8")
    tmp.replace(path)


def read_saved_samples(path: Path) -> tuple[list[Sample], dict | None]:
    """The cached samples and their key (``None`` for a cache written before keys existed)."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(body, list):  # the first format: a bare list, no key
            return [Sample.from_json(obj) for obj in body], None
        if body.get("format") != SAMPLES_FORMAT:
            raise ValueError(f"unknown format {body.get('format')!r}")
        return [Sample.from_json(obj) for obj in body["samples"]], dict(body["key"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: saved samples are unreadable ({exc})") from exc


def load_saved_samples(path: Path) -> list[Sample]:
    return read_saved_samples(path)[0]


def key_differences(saved: dict | None, wanted: dict) -> list[str]:
    """Names of the settings in which a cache's key differs from ``wanted`` (all of them for an unkeyed cache)."""
    if saved is None:
        return ["(no key: written by an older version)"]
    return sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] int64, right-padded
    attention_mask: torch.Tensor  # [B, T]
    loss_mask: torch.Tensor  # [B, T] bool: logits at t (predicting token t+1) are scored
    indices: tuple[int, ...]  # sample indices


def collate(samples: list[Sample], indices, device: torch.device | str = "cpu") -> Batch:
    chosen = [samples[i] for i in indices]
    width = max(len(s.ids) for s in chosen)
    ids = torch.zeros(len(chosen), width, dtype=torch.long)
    attention = torch.zeros(len(chosen), width, dtype=torch.long)
    loss_mask = torch.zeros(len(chosen), width, dtype=torch.bool)
    for row, s in enumerate(chosen):
        n = len(s.ids)
        ids[row, :n] = torch.tensor(s.ids)
        attention[row, :n] = 1
        loss_mask[row, s.target_start - 1 : n - 1] = True
    return Batch(ids.to(device), attention.to(device), loss_mask.to(device), tuple(indices))


def batch_indices(num_samples: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Sample indices of batch ``step``: a fresh seeded permutation per epoch (a pure function of step)."""
    per_epoch = max(1, num_samples // batch_size)
    epoch, slot = divmod(step, per_epoch)
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[slot * batch_size : slot * batch_size + batch_size].tolist()
