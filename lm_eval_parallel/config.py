"""The methods and settings of parallel encoding: the one table the model, sweep, leaderboard and cache read.

A method (``METHODS``) declares what it does to a request and which methods encode the same contexts. A
setting is a field of :class:`PCEConfig`; it declares how its model_arg is parsed and what it changes:

    SCORES    the scores: part of a run's identity (the board's config key, the ``--use_cache`` file)
    REPORTED  not the scores but what is reported with them (``entropy``: no ``attn_entropy`` when off):
              part of the ``--use_cache`` file, whose responses carry it, not of the board's config key
    RUNTIME   neither: memory, speed, side files

"Not the scores" means: equal up to float rounding (other batch shapes, or eager instead of fused attention).

Adding a method is one line in ``METHODS`` plus its rule in the attention; adding a setting is one field.
Stdlib only: the leaderboard reads this module without torch.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

SINK_GENERATE = "Given the following contexts, answer the final question accordingly:\n\n"
SINK_LOGLIKELIHOOD = "Given the following partial context, predicting the next sequence of words:\n\n"


# ---------------------------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """One ``method=`` (SPEC §4)."""

    name: str
    parallel: bool  # P pieces; False: one piece holding every item, and P must be 1
    uses_sink: bool  # the sink text joins the shared prefix
    uses_selection: bool  # selective attention on query rows (SPEC §7)
    contexts: str  # methods with the same value encode identical contexts at one P
    color: str  # plots
    marker: str
    pos: str | None = None  # the piece positions the method prescribes (SPEC §6); None: the pos= setting
    rule: str = ""  # its rule at the query stage (SPEC §7a): "", "structured", "ape" or "soft"
    engine: str = ""  # its own engine (SPEC §4): "" the parallel one, "star" (anchored pieces), "nbce" (a row a piece)


# Board and plot order. A sweep runs, at each P, the methods of one `contexts` family back to back, so the
# second one finds the first one's encoded contexts in the context cache (keyed by what was encoded).
# fmt: off
METHODS = (
    #      name        parallel  sink   selection  contexts  color         marker
    Method("full",     False,    False, False,     "full",   "black",      "*"),
    Method("naive",    True,     False, False,     "plain",  "tab:blue",   "o"),
    Method("sink",     True,     True,  False,     "sink",   "tab:orange", "s"),
    Method("sel",      True,     False, True,      "plain",  "tab:green",  "^"),
    Method("sink+sel", True,     True,  True,      "sink",   "tab:red",    "D"),
    Method("sel_soft", True,     False, True,      "plain",  "tab:olive",  "P",  rule="soft"),
    Method("pcw",      True,     False, False,     "left",   "tab:purple", "v",  pos="left"),
    Method("ape",      True,     False, False,     "left",   "tab:brown",  "X",  pos="left", rule="ape"),
    Method("structured", True,   False, False,     "right",  "tab:cyan",   "<",  pos="right", rule="structured"),
    Method("star",     True,     False, False,     "star",   "tab:pink",   "p",  pos="serial", engine="star"),
    Method("nbce",     True,     False, False,     "left",   "tab:gray",   "h",  pos="left", engine="nbce"),
)
# fmt: on
METHOD_ALIASES = {"parallel": "naive"}


def get_method(name: str) -> Method | None:
    """The method called ``name`` (an alias gives its method); None when there is none."""
    name = METHOD_ALIASES.get(name, name)
    return next((m for m in METHODS if m.name == name), None)


def method_names() -> tuple[str, ...]:
    return tuple(m.name for m in METHODS)


# ---------------------------------------------------------------------------------------------- parsers
# Each takes (model_arg name, raw value) and returns the value, or raises a one-line ValueError naming both.


def as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ValueError(f"{name}={value!r} is not a boolean; use true or false")


def as_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{name}={value!r} must be a positive integer")
    try:
        as_float = float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} must be a positive integer") from None
    if not as_float.is_integer():
        raise ValueError(f"{name}={value!r} must be a positive integer (got a fraction)")
    if as_float <= 0:
        raise ValueError(f"{name}={value!r} must be a positive integer (>= 1)")
    return int(as_float)


def as_positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{name}={value!r} must be a positive number")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} must be a positive number") from None
    if not (number > 0 and number < float("inf")):
        raise ValueError(f"{name}={value!r} must be a positive finite number")
    return number


def as_non_negative_float(name: str, value) -> float:
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not (0 <= number < float("inf")):
        raise ValueError(f"{name}={value!r} must be a finite number >= 0")
    return number


def as_non_negative_int(name: str, value) -> int:
    if value in (0, "0"):
        return 0
    try:
        return as_positive_int(name, value)
    except ValueError:
        raise ValueError(f"{name}={value!r} must be an integer >= 0 (0 = off)") from None


def as_train_len(name: str, value) -> int:
    if value in (0, "0"):
        return 0
    try:
        n = as_positive_int(name, value)
    except ValueError:
        n = 0
    if n < 2:  # ln 1 = 0 cannot divide
        raise ValueError(f"{name}={value!r} must be an integer >= 2 (0 = the model's max_position_embeddings)")
    return n


def one_of(*allowed: str):
    def parse(name: str, value) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(allowed)}")
        return value

    return parse


def as_method(name: str, value) -> str:
    parts = value.split("+") if isinstance(value, str) and get_method(value) is None else []
    if len(parts) > 1 and all(get_method(part) for part in parts):  # star+sel, nbce+sink, ...
        combined = ", ".join(m.name for m in METHODS if "+" in m.name)
        raise ValueError(
            f"{name}={value!r}: {' and '.join(parts)} do not combine (no paper defines it); the combined "
            f"methods are {combined}, and logscale=true goes with any method"
        )
    one_of(*method_names(), *METHOD_ALIASES)(name, value)
    return get_method(value).name


def as_optional_text(name: str, value) -> str | None:
    return None if value is None else str(value)


def as_optional_path(name: str, value) -> str | None:
    return None if value in (None, "") else str(value)


def as_split(name: str, value) -> str:
    """A ``split=`` rule (docs/split.md), kept as its text: tokens, paragraph, sentence or regex:PATTERN."""
    # imported here, not at the top: split.py needs layout.py (torch), and this module stays stdlib only
    from .split import parse_split

    try:
        return str(parse_split(value))
    except TypeError as err:
        raise ValueError(str(err)) from None


def as_output_file(name: str, value) -> str | None:
    """A file the run will write: refused now if its folder cannot be made or written."""
    from .checks import check_writable_file

    path = as_optional_path(name, value)
    if path is not None:
        check_writable_file(path, name)
    return path


def as_text_file(name: str, value) -> str | None:
    """A file whose text is read as a setting (``sink_text_file``): it must exist and hold UTF-8 text."""
    path = as_optional_path(name, value)
    if path is None:
        return None
    if not os.path.isfile(path):
        raise ValueError(f"{name}={path!r} is not a file")
    return path


def read_text_file(name: str, path: str) -> str:
    """The file's text verbatim (trailing newlines included: they are part of a sink); never empty."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name}={path!r} cannot be read as UTF-8 text ({type(exc).__name__})") from None
    if not text:
        raise ValueError(f"{name}={path!r} is empty")
    return text


# ---------------------------------------------------------------------------------------------- settings

SCORES, REPORTED, RUNTIME = "scores", "reported", "runtime"


@dataclass(frozen=True)
class Setting:
    name: str
    default: object
    parse: Callable[[str, object], object]  # (model_arg name, raw value) -> value
    effect: str  # SCORES, REPORTED or RUNTIME
    doc: str
    hashed_at_default: bool = True  # False: in the fingerprint only when set to another value


def setting(default, parse, effect: str, doc: str, hashed_at_default: bool = True):
    """A PCEConfig field with what the registry needs to know about it. A setting added after ``--use_cache``
    files were written takes ``hashed_at_default=False``, so that default configurations keep their files."""
    return field(
        default=default, metadata={"parse": parse, "effect": effect, "doc": doc, "hashed_at_default": hashed_at_default}
    )


# preset= sets the defaults of other settings; a model_arg given explicitly overrides its preset (SPEC §11).
PRESETS = {
    "paper": {},  # the paper's text: every setting at its own default
    "paper_code": {  # the released code (zzsfornlp/parallel_context_encoding_analysis)
        "pos_round": "floor",
        "query_round": "floor",
        "harmonic_prefix": "min1",
        "lm_split": "ceil",
        "gen_stop": "max_gen",
        "entropy_pool": "calls",
    },
}


PREFILL_BATCH_TOKENS = 32768  # = ParallelEngine.PREFILL_BATCH_TOKENS, the default of callers without a config


@dataclass(frozen=True)
class PCEConfig:
    """Parallel-encoding settings: one per model instance, recorded in every results file (``config.pce``)."""

    preset: str = setting(
        "paper", one_of(*PRESETS), SCORES, "defaults of the settings below (SPEC §11)", hashed_at_default=False
    )
    P: int = setting(1, as_positive_int, SCORES, "pieces per request (SPEC §3)")
    method: str = setting("naive", as_method, SCORES, "one of METHODS (SPEC §4)")
    pos: str = setting(
        "even", one_of("even", "left", "right", "harmonic", "serial"), SCORES, "piece positions (SPEC §6)"
    )
    pos_round: str = setting("none", one_of("none", "floor"), SCORES, "floor: the released code's integer cast")
    query_round: str = setting(
        "none", one_of("none", "floor"), SCORES, "floor: the query start too (SPEC §6)", hashed_at_default=False
    )
    harmonic_prefix: str = setting(
        "tokens",
        one_of("tokens", "min1"),
        SCORES,
        "pos=harmonic, min1: an empty prefix spans one position (SPEC §6)",
        hashed_at_default=False,
    )
    lm_split: str = setting(
        "near_equal",
        one_of("near_equal", "ceil"),
        SCORES,
        "unmarked contexts: P near-equal chunks, or chunks of ceil(n/P) tokens (SPEC §1)",
        hashed_at_default=False,
    )
    top_k: int = setting(2, as_positive_int, SCORES, "pieces kept by selection (SPEC §7)")
    score_topn: int = setting(5, as_positive_int, SCORES, "piece score = sum of its top-n probabilities")
    aggr: str = setting(
        "auto",
        one_of("auto", "none", "H", "T", "HT", "LHT"),
        SCORES,
        "aggregation of piece scores over heads / query rows / layers",
    )
    aggr_topn: int = setting(5, as_positive_int, SCORES, "aggregation = sum of the top-n values")
    sel_tau: float = setting(
        0.1, as_positive_float, SCORES, "sel_soft: temperature of the piece weights (SPEC §7)", hashed_at_default=False
    )
    structured_scale: bool = setting(
        True, as_bool, SCORES, "structured: piece keys' weights x 1/M (SPEC §7a)", hashed_at_default=False
    )
    ape_temperature: float = setting(
        0.9, as_positive_float, SCORES, "ape: temperature T on context logits", hashed_at_default=False
    )
    ape_scale: float = setting(
        0.9, as_positive_float, SCORES, "ape: scale S on the context's log-sum-exp", hashed_at_default=False
    )
    nbce_beta: float = setting(
        0.25,
        as_non_negative_float,
        SCORES,
        "nbce: beta of (1 + beta) log p_piece - beta log p_no_context (SPEC §9a)",
        hashed_at_default=False,
    )
    logscale: bool = setting(
        False, as_bool, SCORES, "query logits x ln N / ln logscale_train_len (SPEC §7a)", hashed_at_default=False
    )
    logscale_train_len: int = setting(
        0, as_train_len, SCORES, "logscale: N_train; 0 = the model's max_position_embeddings", hashed_at_default=False
    )
    sink_text: str | None = setting(None, as_optional_text, SCORES, "sink when the task gives none")
    # RUNTIME: the file's text becomes sink_text, which is what the scores (and the cache key) depend on.
    sink_text_file: str | None = setting(
        None, as_text_file, RUNTIME, "file whose text is sink_text (a sink with commas)"
    )
    oracle_keys: bool = setting(False, as_bool, SCORES, "context keys from full attention (paper §4.3.2)")
    entropy: bool = setting(True, as_bool, REPORTED, "compute attn_entropy (SPEC §8)")
    entropy_pool: str = setting(
        "rows",
        one_of("rows", "calls"),
        SCORES,
        "attn_entropy over query rows, or over forward calls (SPEC §8)",
        hashed_at_default=False,
    )
    gen_stop: str = setting(
        "eos",
        one_of("eos", "max_gen"),
        SCORES,
        "stop at EOS / stop strings, or decode max_gen_toks and cut after (SPEC §9)",
        hashed_at_default=False,
    )
    analysis_path: str | None = setting(None, as_output_file, RUNTIME, "JSON lines of per-layer statistics")
    rolling_score_len: int = setting(1024, as_positive_int, SCORES, "loglikelihood_rolling: tokens per window")
    context_cache_mb: int = setting(0, as_non_negative_int, RUNTIME, "MiB of encoded contexts kept for reuse")
    tokenize: str = setting("items", one_of("items", "joint"), SCORES, "items on their own, or the prompt whole")
    split: str = setting(
        "tokens", as_split, SCORES, "where unmarked contexts are cut (docs/split.md)", hashed_at_default=False
    )
    prefill_batch_tokens: int = setting(PREFILL_BATCH_TOKENS, as_positive_int, RUNTIME, "tokens per prefill forward")
    cuda_graphs: bool = setting(True, as_bool, RUNTIME, "decode steps replayed as CUDA graphs (one CUDA device)")
    auto_batch_tokens: int = setting(
        16384, as_positive_int, RUNTIME, "batch_size=auto: query rows per batch = this / row length"
    )

    @classmethod
    def from_args(cls, **args) -> PCEConfig:
        unknown = set(args) - set(SETTINGS)
        if unknown:
            raise ValueError(f"unknown parallel option(s) {sorted(unknown)}; known: {sorted(SETTINGS)}")
        preset = SETTINGS["preset"].parse("preset", args.get("preset", SETTINGS["preset"].default))
        defaults = {name: s.default for name, s in SETTINGS.items()} | PRESETS[preset]
        values = {name: s.parse(name, args.get(name, defaults[name])) for name, s in SETTINGS.items()}
        if values["sink_text_file"] is not None:
            if values["sink_text"] is not None:
                raise ValueError("sink_text and sink_text_file are both given; give one of them")
            values["sink_text"] = read_text_file("sink_text_file", values["sink_text_file"])
        method = get_method(values["method"])
        if method.pos is not None:
            if "pos" in args and values["pos"] != method.pos:
                raise ValueError(
                    f"pos={values['pos']} with method={method.name}: the method places its pieces "
                    f"with pos={method.pos}; leave pos out, or use method=naive with pos="
                )
            values["pos"] = method.pos
        if not method.parallel and values["P"] != 1:
            parallel = "/".join(m.name for m in METHODS if m.parallel)
            raise ValueError(
                f"P={values['P']} with method={values['method']}: it encodes one piece; use P=1, or method={parallel}"
            )
        return cls(**values)

    @property
    def uses_sink(self) -> bool:
        return get_method(self.method).uses_sink

    @property
    def uses_selection(self) -> bool:
        return get_method(self.method).uses_selection

    @property
    def n_pieces(self) -> int:
        return self.P if get_method(self.method).parallel else 1

    def aggr_for(self, request_type: str) -> str:
        """`auto`: none for loglikelihood, HT for generation (the paper's defaults)."""
        if self.aggr != "auto":
            return self.aggr
        return "none" if request_type == "loglikelihood" else "HT"

    def sink_for(self, request_type: str, task_sink: str | None) -> str | None:
        if not self.uses_sink:
            return None
        if task_sink is not None:
            return task_sink
        if self.sink_text is not None:
            return self.sink_text
        return SINK_LOGLIKELIHOOD if request_type == "loglikelihood" else SINK_GENERATE

    def as_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> str:
        """Short hash of every setting that changes the responses (SCORES and REPORTED): names the
        ``--use_cache`` file, so that two configurations never share cached responses."""
        kept = {
            k: v
            for k, v in self.as_dict().items()
            if SETTINGS[k].effect != RUNTIME and (SETTINGS[k].hashed_at_default or v != SETTINGS[k].default)
        }
        return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


SETTINGS = {f.name: Setting(f.name, f.default, **f.metadata) for f in fields(PCEConfig)}

# lm-eval `hf` model_args that do not change scores (hardware, batching, loading).
HF_RUNTIME_ARGS = frozenset(
    {
        "device",
        "device_map",
        "batch_size",
        "max_batch_size",
        "parallelize",
        "trust_remote_code",
        "use_fast_tokenizer",
        "cache_dir",
        "max_memory_per_gpu",
        "max_cpu_memory",
        "offload_folder",
        "autogptq",
        "gptqmodel",
    }
)
# Every model_arg that does not change scores: left out of a run's identity on the board.
NON_SCORE_ARGS = HF_RUNTIME_ARGS | {name for name, s in SETTINGS.items() if s.effect != SCORES}


def take_own_args(kwargs: dict, other_args: set[str]) -> dict:
    """Pop our settings out of ``kwargs``; a misspelt one (close to ours, unknown to ``other_args``, the
    model's own arguments) is refused instead of reaching ``from_pretrained``."""
    own = {k: kwargs.pop(k) for k in list(kwargs) if k in SETTINGS}
    for key in kwargs:
        close = difflib.get_close_matches(key, SETTINGS, n=1, cutoff=0.75)
        if close and key not in other_args:
            raise ValueError(
                f"unknown model_arg {key!r}; did you mean {close[0]!r}? (parallel options: {', '.join(SETTINGS)})"
            )
    return own
