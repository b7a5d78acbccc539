"""``parallel_hf``: lm-eval's HFLM with parallel context encoding (SPEC §1-§9).

Every request is turned into a :class:`~lm_eval_parallel.layout.Layout` (prefix, pieces) plus query
tokens, all requests are validated before any compute, then the engine encodes each distinct
context once and scores / generates from it.
"""
from __future__ import annotations

import bisect
import difflib
import inspect
import json
import logging
import math
import os
from dataclasses import dataclass

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from . import attention
from .config import OWN_ARGS, PCEConfig, _as_positive_int
from .engine import ContextCache, ParallelEngine
from .layout import Layout, group_items
from .resolve import DEFAULT_ALIAS, resolve_pretrained
from .response import GenerationResult, LoglikelihoodResult, RollingResult
from .selection import Selection
from .structure import split_prompt

log = logging.getLogger("lm_eval_parallel")
_HFLM_ARGS = set(inspect.signature(HFLM.__init__).parameters)
_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)


@dataclass
class Prepared:
    """One request after tokenization: its context layout and the query-side token ids."""

    layout: Layout
    query: list[int]
    continuation: list[int]  # scored tokens (loglikelihood); empty for generation
    n_items: int


def check_model_supported(model, config: PCEConfig) -> None:
    """Fail before any compute for models parallel encoding cannot drive (SPEC §5, §6)."""
    cfg = model.config.get_text_config()
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError("parallel_hf needs a decoder-only (causal) model; got an encoder-decoder model")
    has_rope = any("rotary" in name for name, _ in model.named_modules())
    if not has_rope:
        raise ValueError(
            f"model_type={cfg.model_type!r} has no rotary position embeddings; parallel encoding needs RoPE "
            "(supported: llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3 and other RoPE decoders)"
        )
    if getattr(cfg, "rope_scaling", None) and (cfg.rope_scaling or {}).get("rope_type") in ("dynamic", "longrope"):
        warn_once("rope", "dynamic/longrope RoPE picks frequencies from the longest position of each forward; "
                          "pieces and query may then use different frequencies")


def sliding_window_of(model) -> int | None:
    cfg = model.config.get_text_config()
    window = getattr(cfg, "sliding_window", None)
    if window is None:
        return None
    if cfg.model_type in ("qwen2", "qwen3") and not getattr(cfg, "use_sliding_window", False):
        return None
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return int(window)


@register_model("parallel_hf")
class ParallelHFLM(HFLM):
    """HFLM whose loglikelihood, loglikelihood_rolling and generate_until use parallel encoding."""

    def __init__(self, pretrained=DEFAULT_ALIAS, **kwargs):
        own = {k: kwargs.pop(k) for k in list(kwargs) if k in OWN_ARGS}
        for key in kwargs:  # a misspelt option of ours would otherwise reach from_pretrained
            close = difflib.get_close_matches(key, OWN_ARGS, n=1, cutoff=0.75)
            if close and key not in _HFLM_ARGS:
                raise ValueError(f"unknown model_arg {key!r}; did you mean {close[0]!r}? (parallel options: {', '.join(OWN_ARGS)})")
        self.pce = PCEConfig.from_args(**own)  # bad values fail here, before any model is loaded
        self.auto_batch_tokens = _as_positive_int("auto_batch_tokens", kwargs.pop("auto_batch_tokens", 16384))
        self.prefill_batch_tokens = _as_positive_int(
            "prefill_batch_tokens", kwargs.pop("prefill_batch_tokens", ParallelEngine.PREFILL_BATCH_TOKENS))
        pretrained, gguf_file = resolve_pretrained(pretrained, kwargs.pop("gguf_file", None))
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        if kwargs.get("attn_implementation") not in (None, attention.ATTN_NAME):
            warn_once("attn", f"attn_implementation={kwargs['attn_implementation']!r} is replaced by "
                              f"{attention.ATTN_NAME!r} (parallel encoding needs its own attention function)")
        kwargs.pop("attn_implementation", None)
        attention.register()
        super().__init__(pretrained=pretrained, **kwargs)
        check_model_supported(self.model, self.pce)
        self.model.set_attn_implementation(attention.ATTN_NAME)
        self.sliding_window = sliding_window_of(self.model)
        self.engine = None
        self.configure(self.pce)

    def configure(self, pce: PCEConfig) -> None:
        """Switch to other parallel settings without reloading the model (used by ``sweep``)."""
        previous = self.engine
        self.pce = pce
        self.engine = ParallelEngine(
            self.model, self.device, pos=pce.pos, pos_round=pce.pos_round,
            want_stats=pce.entropy, analysis=pce.analysis_path is not None,
            max_batch_tokens=self.prefill_batch_tokens,
        )
        if previous is not None:  # the shared prefix KV does not depend on P, method or pos
            self.engine._prefix_cache = previous._prefix_cache
            self.engine.context_cache = previous.context_cache
        if self.engine.context_cache is None and pce.context_cache_mb > 0:
            self.engine.context_cache = ContextCache(pce.context_cache_mb * 2**20)
        if pce.uses_selection and pce.P <= pce.top_k:
            warn_once(f"sel{pce.P}", f"method={pce.method} with top_k={pce.top_k} >= P={pce.P}: "
                                     "selection keeps every piece and changes nothing")

    # ------------------------------------------------------------------ tokens -> layout
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def _bos(self) -> list[int]:
        return [self.tokenizer.bos_token_id] if self.add_bos_token and self.tokenizer.bos_token_id is not None else []

    def _prefix(self, request_type: str, task_sink: str | None, preamble: list[int] = ()) -> tuple[int, ...]:
        sink = self.pce.sink_for(request_type, task_sink)
        return tuple(self._bos() + self._ids(sink or "") + list(preamble))

    def _segments(self, parts, continuation: str | None):
        """Token ids of (preamble, each item, query, continuation) of a marked prompt.

        ``tokenize=items`` (SPEC §2): every part on its own. ``tokenize=joint``: the plain prompt tokenized
        whole, as lm-eval's ``hf`` does, and cut where the items start (a token belongs to the part its first
        character is in), so ``full`` reads exactly ``hf``'s ids.
        """
        if self.pce.tokenize == "items":
            units = [self._ids(item) for item in parts.items]
            if continuation is None:
                return self._ids(parts.preamble), units, self._ids(parts.query), []
            q_ids, c_ids = self._encode_pair(parts.query, continuation)
            return self._ids(parts.preamble), units, q_ids, c_ids
        plain = parts.preamble + "".join(parts.items) + parts.query
        c_ids: list[int] = []
        if continuation is not None:
            plain, continuation = self._move_trailing_spaces(plain, continuation)
        enc = self.tokenizer(plain, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        if continuation is not None:
            c_ids = self._ids(plain + continuation)[len(ids):]
        starts = [len(parts.preamble)]
        for item in parts.items:
            starts.append(starts[-1] + len(item))  # starts[i+1]: where item i ends; the last one: the query
        segments: list[list[int]] = [[] for _ in range(len(parts.items) + 2)]
        for token, (first, _) in zip(ids, enc["offset_mapping"]):
            segments[bisect.bisect_right(starts, first)].append(token)
        return segments[0], segments[1:-1], segments[-1], c_ids

    def _pieces(self, units: list[list[int]]) -> tuple[tuple[int, ...], ...]:
        n_pieces = self.pce.n_pieces_for()
        if n_pieces > len(units) and len(units) > 0 and self.pce.method != "full":
            warn_once("peff", f"P={n_pieces} is larger than the {len(units)} items of a request: every item becomes "
                              f"its own piece (SPEC §3); logged once")
        return tuple(tuple(t for unit in group for t in unit) for group in group_items(units, n_pieces))

    @staticmethod
    def _move_trailing_spaces(text: str, continuation: str) -> tuple[str, str]:
        """As HFLM's ``_encode_pair``: trailing spaces of the context belong to the continuation."""
        n_spaces = len(text) - len(text.rstrip())
        if n_spaces:
            return text[:-n_spaces], text[-n_spaces:] + continuation
        return text, continuation

    def _encode_pair(self, text: str, continuation: str) -> tuple[list[int], list[int]]:
        """HFLM's ``_encode_pair`` without special tokens: encode both together, split after ``text``."""
        text, continuation = self._move_trailing_spaces(text, continuation)
        ids = self._ids(text)
        return ids, self._ids(text + continuation)[len(ids):]

    def _chunks(self, tokens: list[int]) -> list[list[int]]:
        """Unmarked context: contiguous chunks of near-equal token count (SPEC §1, the rule of §3 on tokens)."""
        return [chunk for chunk in group_items(tokens, self.pce.n_pieces_for()) if chunk]

    def prepare_loglikelihood(self, context: str, continuation: str) -> Prepared:
        parts = split_prompt(context)
        if parts is not None:
            items, query, sink = parts
            if not query.strip():
                raise ValueError("empty query after the items: the query marker must be followed by text")
            preamble, units, q_ids, c_ids = self._segments(parts, continuation)
            if not q_ids:
                raise ValueError("the query has no token of its own (it merged into the last item); tokenize=items avoids this")
            layout = Layout(self._prefix("loglikelihood", sink, preamble), self._pieces(units))
            return Prepared(layout, q_ids, c_ids, len(items))
        if context == "":
            c_ids = self._ids(continuation)
            if c_ids and c_ids[0] == self.prefix_token_id:
                q_ids, c_ids = c_ids[:1], c_ids[1:]
            else:
                q_ids = [self.prefix_token_id]
            return Prepared(Layout(self._prefix("loglikelihood", None), ()), q_ids, c_ids, 0)
        ctx_ids, c_ids = self._encode_pair(context, continuation)
        rest, q_ids = ctx_ids[:-1], ctx_ids[-1:]
        chunks = self._chunks(rest)
        layout = Layout(self._prefix("loglikelihood", None), tuple(tuple(c) for c in chunks))
        return Prepared(layout, q_ids, c_ids, len(rest))

    def prepare_generation(self, context: str) -> Prepared:
        parts = split_prompt(context)
        if parts is not None:
            items, query, sink = parts
            if not query:
                raise ValueError("empty query after the items: the query marker must be followed by text")
            preamble, units, q_ids, _ = self._segments(parts, None)
            if not q_ids:
                raise ValueError("the query has no token of its own (it merged into the last item); tokenize=items avoids this")
            layout = Layout(self._prefix("generate_until", sink, preamble), self._pieces(units))
            return Prepared(layout, q_ids, [], len(items))
        enc = self.tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        if not ids:
            return Prepared(Layout(self._prefix("generate_until", None), ()), [self.prefix_token_id], [], 0)
        n_query = 1
        blank = context.rfind("\n\n")
        if blank >= 0 and "offset_mapping" in enc:
            boundary = blank + 2
            after = sum(1 for start, _ in enc["offset_mapping"] if start >= boundary)
            if 0 < after <= len(ids) // 4:
                n_query = after
        rest, q_ids = ids[:-n_query], ids[-n_query:]
        layout = Layout(self._prefix("generate_until", None), tuple(tuple(c) for c in self._chunks(rest)))
        return Prepared(layout, q_ids, [], len(rest))

    def _check_fits(self, prepared: Prepared, extra: int) -> None:
        """Sliding windows must cover the whole request; positions beyond the window are logged."""
        n_tokens = prepared.layout.n_context + len(prepared.query) + len(prepared.continuation) + extra
        if self.sliding_window is not None and n_tokens > self.sliding_window:
            raise ValueError(
                f"request of {n_tokens} tokens is longer than the model's sliding window ({self.sliding_window}); "
                "parallel encoding needs every layer to see the whole request (use a shorter task length)"
            )
        lengths = [len(p) for p in prepared.layout.pieces]
        span = len(prepared.layout.prefix) + (sum(lengths) if self.pce.pos == "serial" else max(lengths, default=0))
        span += len(prepared.query) + len(prepared.continuation) + extra
        if span > self.max_length:
            warn_once("window", f"a request spans {span} positions (prefix + longest piece + query), more than the "
                                f"model's window max_length={self.max_length}; nothing is truncated (logged once)")

    # ------------------------------------------------------------------ helpers
    def _selection(self, request_type: str) -> Selection | None:
        if not self.pce.uses_selection:
            return None
        return Selection(self.pce.top_k, self.pce.score_topn, self.pce.aggr_for(request_type), self.pce.aggr_topn)

    def _rows_per_batch(self, context_len: int, row_len: int) -> int:
        if self.batch_size == "auto" or str(self.batch_size).startswith("auto"):
            cap = int(self.max_batch_size or 64)
            return max(1, min(cap, self.auto_batch_tokens // max(1, context_len + row_len)))
        return max(1, int(self.batch_size))

    def _write_analysis(self, records: list[dict]) -> None:
        path = self.pce.analysis_path
        if not path or not records:
            return
        if self.world_size > 1:
            path = f"{path}.rank{self.rank}"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        lines = "".join(json.dumps(r) + "\n" for r in records)
        with open(path, "a", encoding="utf-8") as f:
            f.write(lines)

    def _analysis(self, request_type: str, req, prepared: Prepared, stats) -> dict:
        record = {
            "request_type": request_type,
            "task": getattr(req, "task_name", None),
            "doc_id": getattr(req, "doc_id", None),
            "idx": getattr(req, "idx", None),
            "P": self.pce.P, "method": self.pce.method, "pos": self.pce.pos,
            "n_pieces": len(prepared.layout.pieces), "n_context_tokens": prepared.layout.n_context,
            "n_query_tokens": len(prepared.query) + len(prepared.continuation),
        }
        record.update(stats.analysis_record() if stats is not None else {})
        return record

    # ------------------------------------------------------------------ scoring
    def _score_prepared(self, prepared: list[Prepared], request_type: str, disable_tqdm: bool = False):
        """Score every (layout, query, continuation); each distinct context is encoded once."""
        selection = self._selection(request_type)
        by_layout: dict[Layout, list[int]] = {}
        for i, p in enumerate(prepared):
            by_layout.setdefault(p.layout, []).append(i)
        order = sorted(by_layout, key=lambda lay: -lay.n_context)
        results: list = [None] * len(prepared)
        pbar = tqdm(total=len(prepared), disable=disable_tqdm or self.rank != 0, desc="parallel_hf loglikelihood")
        pending: list[tuple] = []

        def flush():
            if not pending:
                return
            out = self.engine.score([c for c, _ in pending], [prepared[i].query for _, i in pending],
                                    [prepared[i].continuation for _, i in pending], selection)
            for (_, i), r in zip(pending, out):
                results[i] = r
            pbar.update(len(pending))
            pending.clear()

        for layout in order:
            members = by_layout[layout]
            width = max(len(prepared[i].query) + len(prepared[i].continuation) for i in members)
            context = self.engine.encode(layout, reserve=width, oracle_keys=self.pce.oracle_keys)
            rows = self._rows_per_batch(layout.n_context, width)
            for i in members:
                pending.append((context, i))
                if len(pending) >= rows:
                    flush()
        flush()
        pbar.close()
        return results

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        prepared = [self.prepare_loglikelihood(*req.args) for req in requests]
        for p in prepared:
            self._check_fits(p, 0)
        scored = self._score_prepared(prepared, "loglikelihood", disable_tqdm)
        out, records = [], []
        for req, p, (ll, greedy, stats) in zip(requests, prepared, scored):
            entropy = stats.attn_entropy if stats is not None else math.nan
            result = LoglikelihoodResult(ll, greedy, entropy)
            out.append(result)
            self.cache_hook.add_partial("loglikelihood", req.args, result)
            if self.pce.analysis_path:
                records.append(self._analysis("loglikelihood", req, p, stats))
        self._write_analysis(records)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        """Rolling windows of max_length tokens; each window scores ``rolling_score_len`` new tokens with
        the rest of the window as context, split by the unmarked-context rule (the first window has only
        the prefix token as context). ``rolling_score_len >= max_length`` gives lm-eval's own windows."""
        score_len = max(1, min(self.pce.rolling_score_len, self.max_length))  # max_length: hf's disjoint windows
        prepared, owner = [], []
        for r, req in enumerate(requests):
            (string,) = req.args
            tokens = self._ids(string)
            windows = get_rolling_token_windows(
                token_list=tokens, prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=self.max_length - score_len + 1,
            )
            for ctx, cont in map(make_disjoint_window, windows):
                rest, q_ids = ctx[:-1], ctx[-1:]
                layout = Layout(self._prefix("loglikelihood", None), tuple(tuple(c) for c in self._chunks(rest)))
                prepared.append(Prepared(layout, q_ids, cont, len(rest)))
                owner.append(r)
        for p in prepared:
            self._check_fits(p, 0)
        scored = self._score_prepared(prepared, "loglikelihood", disable_tqdm)
        totals = [0.0] * len(requests)
        entropies: list[list[float]] = [[] for _ in requests]
        for r, (ll, _, stats) in zip(owner, scored):
            totals[r] += ll
            if stats is not None:
                entropies[r].append(stats.attn_entropy)
        out = []
        for req, total, ents in zip(requests, totals, entropies):
            result = RollingResult(total, sum(ents) / len(ents) if ents else math.nan)
            out.append(result)
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, result)
        return out

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False):
        eos_text = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        eos_ids = {self.eot_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if gen_eos is not None:
            eos_ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        jobs = []
        for req in requests:
            context, gen_kwargs = req.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            if kwargs.get("do_sample"):
                warn_once("sample", "parallel_hf decodes greedily; do_sample/temperature are ignored")
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            jobs.append((self.prepare_generation(context), until, int(kwargs["max_gen_toks"])))
        for prepared, _, max_gen in jobs:
            self._check_fits(prepared, max_gen)
        selection = self._selection("generate_until")
        results: list = [None] * len(requests)
        order = sorted(range(len(jobs)), key=lambda i: -jobs[i][0].layout.n_context)
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="parallel_hf generate_until")
        records = []
        start = 0
        while start < len(order):
            first = jobs[order[start]][0]
            rows = self._rows_per_batch(first.layout.n_context, len(first.query) + jobs[order[start]][2])
            batch = order[start : start + rows]
            start += len(batch)
            encoded: dict[Layout, object] = {}  # contexts live only as long as their batch
            for i in batch:
                layout = jobs[i][0].layout
                if layout not in encoded:
                    encoded[layout] = self.engine.encode(layout, reserve=len(jobs[i][0].query) + jobs[i][2] + 1,
                                                         oracle_keys=self.pce.oracle_keys)
            contexts = [encoded[jobs[i][0].layout] for i in batch]
            stops = [jobs[i][1] for i in batch]
            limits = [jobs[i][2] for i in batch]

            def is_done(b, tokens, stops=stops, limits=limits):
                if len(tokens) >= limits[b]:
                    return True
                text = self.tokenizer.decode(tokens, skip_special_tokens=False)
                return any(s and s in text for s in stops[b])

            out = self.engine.generate(contexts, [jobs[i][0].query for i in batch], max(jobs[i][2] for i in batch),
                                       selection, is_done, eos_ids)
            for b, (i, (tokens, stats)) in enumerate(zip(batch, out)):
                text = postprocess_generated_text(self.tok_decode(tokens), jobs[i][1], None)
                result = GenerationResult(text, stats.attn_entropy if stats is not None else math.nan)
                results[i] = result
                self.cache_hook.add_partial("generate_until", requests[i].args, result)
                if self.pce.analysis_path:
                    records.append(self._analysis("generate_until", requests[i], jobs[i][0], stats))
            pbar.update(len(batch))
        pbar.close()
        self._write_analysis(records)
        return results

    def cache_fingerprint(self) -> str:
        """Short hash of every parallel setting that changes results (names the --use_cache file)."""
        import hashlib

        settings = {k: v for k, v in self.pce.as_dict().items() if k not in ("analysis_path", "context_cache_mb")}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["pce"] = self.pce.as_dict()
        return info
