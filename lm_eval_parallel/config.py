"""Our model_args (everything HFLM does not know), validated before any model is loaded."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

METHODS = ("full", "naive", "parallel", "sink", "sel", "sink+sel")
POSITIONS = ("even", "left", "right", "harmonic", "serial")
POS_ROUNDS = ("none", "floor")
AGGRS = ("auto", "none", "H", "T", "HT", "LHT")
TOKENIZE = ("items", "joint")

SINK_GENERATE = "Given the following contexts, answer the final question accordingly:\n\n"
SINK_LOGLIKELIHOOD = "Given the following partial context, predicting the next sequence of words:\n\n"


def _as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ValueError(f"{name}={value!r} is not a boolean; use true or false")


def _as_positive_int(name: str, value) -> int:
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


def _as_non_negative_int(name: str, value) -> int:
    if value in (0, "0"):
        return 0
    return _as_positive_int(name, value)


def _choice(name: str, value, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class PCEConfig:
    """Parallel-encoding settings: one per model instance, recorded in every results file."""

    P: int = 1
    method: str = "naive"
    pos: str = "even"
    pos_round: str = "none"
    top_k: int = 2
    score_topn: int = 5
    aggr: str = "auto"
    aggr_topn: int = 5
    sink_text: str | None = None
    oracle_keys: bool = False
    entropy: bool = True
    analysis_path: str | None = None
    rolling_score_len: int = 1024
    context_cache_mb: int = 0
    tokenize: str = "items"

    @classmethod
    def from_args(cls, **kw) -> "PCEConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(kw) - known
        if unknown:
            raise ValueError(f"unknown parallel option(s) {sorted(unknown)}; known: {sorted(known)}")
        method = _choice("method", kw.get("method", cls.method), METHODS)
        if method == "parallel":
            method = "naive"
        P = _as_positive_int("P", kw.get("P", cls.P))
        if method == "full" and P != 1:
            raise ValueError(f"P={P} with method=full: full attention has one piece; use P=1, or method=naive/sink/sel/sink+sel")
        sink_text = kw.get("sink_text", None)
        if sink_text is not None and not isinstance(sink_text, str):
            sink_text = str(sink_text)
        analysis_path = kw.get("analysis_path")
        return cls(
            P=P,
            method=method,
            pos=_choice("pos", kw.get("pos", cls.pos), POSITIONS),
            pos_round=_choice("pos_round", kw.get("pos_round", cls.pos_round), POS_ROUNDS),
            top_k=_as_positive_int("top_k", kw.get("top_k", cls.top_k)),
            score_topn=_as_positive_int("score_topn", kw.get("score_topn", cls.score_topn)),
            aggr=_choice("aggr", kw.get("aggr", cls.aggr), AGGRS),
            aggr_topn=_as_positive_int("aggr_topn", kw.get("aggr_topn", cls.aggr_topn)),
            sink_text=sink_text,
            oracle_keys=_as_bool("oracle_keys", kw.get("oracle_keys", cls.oracle_keys)),
            entropy=_as_bool("entropy", kw.get("entropy", cls.entropy)),
            analysis_path=None if analysis_path in (None, "") else str(analysis_path),
            rolling_score_len=_as_positive_int("rolling_score_len", kw.get("rolling_score_len", cls.rolling_score_len)),
            context_cache_mb=_as_non_negative_int("context_cache_mb", kw.get("context_cache_mb", cls.context_cache_mb)),
            tokenize=_choice("tokenize", kw.get("tokenize", cls.tokenize), TOKENIZE),
        )

    @property
    def uses_sink(self) -> bool:
        return self.method in ("sink", "sink+sel")

    @property
    def uses_selection(self) -> bool:
        return self.method in ("sel", "sink+sel")

    def n_pieces_for(self) -> int:
        return 1 if self.method == "full" else self.P

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


OWN_ARGS = tuple(f.name for f in fields(PCEConfig))
