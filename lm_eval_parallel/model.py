"""``parallel_hf``: lm-eval's HFLM with parallel context encoding (SPEC §1-§9).

Strings -> token ids is the request builder's job (``requests.py``, as HFLM's ``loglikelihood`` /
``_encode_pair``); this adapter validates every request before any compute, schedules them so that each
distinct context is encoded once, calls the engine (token ids -> scores) and wraps its results for lm-eval.
"""

from __future__ import annotations

import inspect
import json
import math
import os

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from . import attention
from .checks import check_device, check_dtype
from .config import PCEConfig, get_method, take_own_args
from .engine import ContextCache, ParallelEngine
from .identity import identity_fingerprint, identity_of
from .layout import Layout
from .log import warn_once
from .nbce import NBCEEngine
from .query_rules import QueryRule
from .requests import Prepared, RequestBuilder, TokenMemo
from .resolve import DEFAULT_ALIAS, check_pretrained, resolve_pretrained
from .response import GenerationResult, LoglikelihoodResult, RollingResult
from .selection import Selection
from .star import StarEngine

_HFLM_ARGS = set(inspect.signature(HFLM.__init__).parameters)
_HFLM_DEFAULTS = {name: p.default for name, p in inspect.signature(HFLM.__init__).parameters.items()}
ENGINES = {"": ParallelEngine, "star": StarEngine, "nbce": NBCEEngine}  # by Method.engine
LONG_SINK_TOKENS = 512  # the paper's sinks are about 15 tokens; every piece attends to the whole sink


def check_model_supported(model) -> None:
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
        warn_once(
            "rope",
            "dynamic/longrope RoPE picks frequencies from the longest position of each forward; "
            "pieces and query may then use different frequencies",
        )


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


def selection_for(pce: PCEConfig, request_type: str) -> Selection | None:
    if not pce.uses_selection:
        return None
    tau = pce.sel_tau if get_method(pce.method).rule == "soft" else None
    return Selection(pce.top_k, pce.score_topn, pce.aggr_for(request_type), pce.aggr_topn, tau)


def engine_for(model, device, pce: PCEConfig) -> ParallelEngine:
    """The engine that runs ``pce`` on ``model`` (positions, statistics, batching); star and nbce have their own."""
    engine = get_method(pce.method).engine
    own = {"beta": pce.nbce_beta} if engine == "nbce" else {}
    return ENGINES[engine](
        model,
        device,
        pos=pce.pos,
        pos_round=pce.pos_round,
        want_stats=pce.entropy,
        analysis=pce.analysis_path is not None,
        max_batch_tokens=pce.prefill_batch_tokens,
        query_round=pce.query_round,
        harmonic_prefix=pce.harmonic_prefix,
        entropy_pool=pce.entropy_pool,
        rule=query_rule_for(pce, model),
        cuda_graphs=pce.cuda_graphs,
        **own,
    )


def query_rule_for(pce: PCEConfig, model) -> QueryRule | None:
    """The query rows' rule of ``pce``'s method (SPEC §7a); None when the logits are left as they are."""
    method = get_method(pce.method)
    train_len = None
    if pce.logscale:
        train_len = pce.logscale_train_len or getattr(model.config.get_text_config(), "max_position_embeddings", None)
        if not isinstance(train_len, int) or train_len < 2:
            raise ValueError(
                f"logscale=true: the model gives no max_position_embeddings ({train_len!r}); "
                "set logscale_train_len= to its training context length"
            )
    rule = QueryRule(
        logscale_train_len=train_len,
        structured=method.rule == "structured" and pce.structured_scale,
        ape=(pce.ape_temperature, pce.ape_scale) if method.rule == "ape" else None,
    )
    return None if rule == QueryRule() else rule


def until_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """The tokens before the first EOS (all of them when there is none)."""
    return next((tokens[:k] for k, t in enumerate(tokens) if t in eos_ids), tokens)


def stop_in_tail(tokenizer, tokens: list[int], stops: list[str]) -> bool:
    """Whether a stop string is in the text of ``tokens`` now that its last token came, as
    ``any(s in decode(tokens))`` at every step tells, decoding only the tail that can hold a new match.

    Checked after every token, a stop not found before must end in the last token's text, so it lies in the last
    ``len(s in UTF-8) + 2`` tokens: every token holds at least one byte, one more covers a character split
    across tokens, and one more a leading space a tokenizer drops from the first token it decodes."""
    stops = [s for s in stops if s]
    if not stops:
        return False
    tail = max(len(s.encode("utf-8")) for s in stops) + 2
    text = tokenizer.decode(tokens[-tail:], skip_special_tokens=False)
    return any(s in text for s in stops)


def analysis_record(pce: PCEConfig, request_type: str, req, prepared: Prepared, stats) -> dict:
    """One line of the ``analysis_path`` JSONL: the request, its layout and the engine's statistics."""
    record = {
        "request_type": request_type,
        "task": getattr(req, "task_name", None),
        "doc_id": getattr(req, "doc_id", None),
        "idx": getattr(req, "idx", None),
        "P": pce.P,
        "method": pce.method,
        "pos": pce.pos,
        "n_pieces": len(prepared.layout.pieces),
        "n_context_tokens": prepared.layout.n_context,
        "n_query_tokens": len(prepared.query) + len(prepared.continuation),
    }
    record.update(stats.analysis_record() if stats is not None else {})
    return record


@register_model("parallel_hf")
class ParallelHFLM(HFLM):
    """HFLM whose loglikelihood, loglikelihood_rolling and generate_until use parallel encoding."""

    def __init__(self, pretrained=DEFAULT_ALIAS, **kwargs):
        self.pce = PCEConfig.from_args(**take_own_args(kwargs, _HFLM_ARGS))  # bad values fail before loading
        pretrained, gguf_file = resolve_pretrained(pretrained, kwargs.pop("gguf_file", None))
        check_pretrained(pretrained)
        check_dtype(kwargs.get("dtype"))
        check_device(kwargs.get("device", _HFLM_DEFAULTS["device"]))
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        if kwargs.get("attn_implementation") not in (None, attention.ATTN_NAME):
            warn_once(
                "attn",
                f"attn_implementation={kwargs['attn_implementation']!r} is replaced by "
                f"{attention.ATTN_NAME!r} (parallel encoding needs its own attention function)",
            )
        kwargs.pop("attn_implementation", None)
        attention.register()
        super().__init__(pretrained=pretrained, **kwargs)
        self.cache_identity = identity_of(self, pretrained, gguf_file, kwargs.get("subfolder"))
        check_model_supported(self.model)
        self.model.set_attn_implementation(attention.ATTN_NAME)
        self.sliding_window = sliding_window_of(self.model)
        self.engine = None
        self.token_memo = TokenMemo()  # one tokenizer for the model's lifetime: shared by every configuration
        self.configure(self.pce)

    def configure(self, pce: PCEConfig) -> None:
        """Switch to other parallel settings without reloading the model (used by ``sweep``)."""
        previous = self.engine
        self.pce = pce
        bos = self.tokenizer.bos_token_id if self.add_bos_token else None
        self.builder = RequestBuilder(self.tokenizer, pce, bos, self.prefix_token_id, self.token_memo)
        self.engine = engine_for(self.model, self.device, pce)
        if previous is not None:  # the shared prefix KV does not depend on P, method or pos
            self.engine._prefix_cache = previous._prefix_cache
            self.engine.context_cache = previous.context_cache
        if self.engine.context_cache is None and pce.context_cache_mb > 0:
            self.engine.context_cache = ContextCache(pce.context_cache_mb * 2**20)
        if pce.uses_sink and pce.sink_text is not None:
            n_tokens = len(self.builder.ids(pce.sink_text))
            if n_tokens > LONG_SINK_TOKENS:
                warn_once(
                    f"sink{n_tokens}",
                    f"sink_text is {n_tokens} tokens ({len(pce.sink_text)} characters): "
                    "every piece attends to all of it and starts after it; the paper's "
                    "sinks are about 15 tokens",
                )
        if pce.uses_selection and get_method(pce.method).rule != "soft" and pce.P <= pce.top_k:
            warn_once(
                f"sel{pce.P}",
                f"method={pce.method} with top_k={pce.top_k} >= P={pce.P}: "
                "selection keeps every piece and changes nothing",
            )

    def prepare_loglikelihood(self, context: str, continuation: str) -> Prepared:
        return self.builder.loglikelihood(context, continuation)

    def prepare_generation(self, context: str) -> Prepared:
        return self.builder.generation(context)

    def _rows_per_batch(self, context_len: int, row_len: int) -> int:
        if str(self.batch_size).startswith("auto"):
            cap = int(self.max_batch_size or 64)
            return max(1, min(cap, self.pce.auto_batch_tokens // max(1, context_len + row_len)))
        return max(1, int(self.batch_size))

    def _write_analysis(self, records: list[dict]) -> None:
        path = self.pce.analysis_path
        if not path or not records:
            return
        if self.world_size > 1:
            path = f"{path}.rank{self.rank}"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))

    # ------------------------------------------------------------------ scoring
    def _score_prepared(self, prepared: list[Prepared], request_type: str, disable_tqdm: bool = False):
        """Score every (layout, query, continuation); each distinct context is encoded once."""
        selection = selection_for(self.pce, request_type)
        by_layout: dict[Layout, list[int]] = {}
        for i, p in enumerate(prepared):
            by_layout.setdefault(p.layout, []).append(i)
        results: list = [None] * len(prepared)
        pbar = tqdm(total=len(prepared), disable=disable_tqdm or self.rank != 0, desc="parallel_hf loglikelihood")
        pending: list[tuple] = []

        def flush():
            if not pending:
                return
            out = self.engine.score(
                [c for c, _ in pending],
                [prepared[i].query for _, i in pending],
                [prepared[i].continuation for _, i in pending],
                selection,
            )
            for (_, i), r in zip(pending, out):
                results[i] = r
            pbar.update(len(pending))
            pending.clear()

        def width(layout: Layout) -> int:
            return max(len(prepared[i].query) + len(prepared[i].continuation) for i in by_layout[layout])

        layouts = sorted(by_layout, key=lambda lay: -lay.n_context)
        start = 0
        while start < len(layouts):
            # the contexts of about one query batch are prefilled together (their rows share forwards)
            rows = self._rows_per_batch(layouts[start].n_context, width(layouts[start]))
            group, n_requests = [], 0
            while start < len(layouts) and (not group or n_requests + len(by_layout[layouts[start]]) <= rows):
                group.append(layouts[start])
                n_requests += len(by_layout[layouts[start]])
                start += 1
            contexts = self.engine.encode_many(group, [width(lay) for lay in group], self.pce.oracle_keys)
            for layout, context in zip(group, contexts):
                for i in by_layout[layout]:
                    pending.append((context, i))
                    if len(pending) >= rows:
                        flush()
        flush()
        pbar.close()
        return results

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self.builder.warm(req.args[0] for req in requests)
        prepared = [self.prepare_loglikelihood(*req.args) for req in requests]
        for p in prepared:
            self.builder.check_fits(p, 0, self.sliding_window, self.max_length)
        scored = self._score_prepared(prepared, "loglikelihood", disable_tqdm)
        out, records = [], []
        for req, p, (ll, greedy, stats) in zip(requests, prepared, scored):
            result = LoglikelihoodResult(ll, greedy, stats.attn_entropy if stats is not None else math.nan)
            out.append(result)
            self.cache_hook.add_partial("loglikelihood", req.args, result)
            if self.pce.analysis_path:
                records.append(analysis_record(self.pce, "loglikelihood", req, p, stats))
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
            windows = get_rolling_token_windows(
                token_list=self.builder.ids(string),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=self.max_length - score_len + 1,
            )
            for ctx, cont in map(make_disjoint_window, windows):
                prepared.append(self.builder.loglikelihood_tokens(ctx, cont))
                owner.append(r)
        for p in prepared:
            self.builder.check_fits(p, 0, self.sliding_window, self.max_length)
        totals = [0.0] * len(requests)
        entropies: list[list[float]] = [[] for _ in requests]
        for r, (ll, _, stats) in zip(owner, self._score_prepared(prepared, "loglikelihood", disable_tqdm)):
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
        jobs = []  # (prepared, stop strings, max new tokens)
        self.builder.warm(req.args[0] for req in requests)
        for req in requests:
            context, gen_kwargs = req.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            if kwargs.get("do_sample"):
                warn_once("sample", "parallel_hf decodes greedily; do_sample/temperature are ignored")
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            jobs.append((self.prepare_generation(context), until, int(kwargs["max_gen_toks"])))
        for prepared, _, max_gen in jobs:
            self.builder.check_fits(prepared, max_gen, self.sliding_window, self.max_length)
        selection = selection_for(self.pce, "generate_until")
        # gen_stop=max_gen: every row decodes max_gen_toks tokens, cut at EOS / stop strings afterwards (SPEC §9).
        # entropy_pool=calls: one token more is decoded, so that the last kept one is fed back (SPEC §8).
        to_eos = self.pce.gen_stop == "eos"
        fed_back = int(self.engine.want_stats and self.pce.entropy_pool == "calls")
        engine_eos = eos_ids if to_eos and not fed_back else set()
        results: list = [None] * len(requests)
        # rows of a batch decode until its longest one is done: batch requests of equal max_gen_toks, longest first
        order = sorted(range(len(jobs)), key=lambda i: (-jobs[i][2], -jobs[i][0].layout.n_context))
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="parallel_hf generate_until")
        records = []
        start = 0
        while start < len(order):
            first, _, first_max = jobs[order[start]]
            batch = order[start : start + self._rows_per_batch(first.layout.n_context, len(first.query) + first_max)]
            start += len(batch)
            reserve: dict[Layout, int] = {}  # contexts live only as long as their batch
            for i in batch:
                prepared, _, max_gen = jobs[i]
                needed = len(prepared.query) + max_gen + 1
                reserve[prepared.layout] = max(reserve.get(prepared.layout, 0), needed)
            encoded = dict(
                zip(reserve, self.engine.encode_many(list(reserve), list(reserve.values()), self.pce.oracle_keys))
            )
            stops = [jobs[i][1] for i in batch]
            limits = [jobs[i][2] for i in batch]

            def is_done(b, tokens, stops=stops, limits=limits):
                tokens = tokens[: len(tokens) - fed_back]  # the fed-back extra token is not the row's
                if len(tokens) >= limits[b]:
                    return True
                if not to_eos or not tokens:
                    return False
                if fed_back and tokens[-1] in eos_ids:
                    return True
                return stop_in_tail(self.tokenizer, tokens, stops[b])

            out = self.engine.generate(
                [encoded[jobs[i][0].layout] for i in batch],
                [jobs[i][0].query for i in batch],
                max(limits) + fed_back,
                selection,
                is_done,
                engine_eos,
            )
            for i, (tokens, stats) in zip(batch, out):
                tokens = tokens[: len(tokens) - fed_back]
                if not to_eos:
                    tokens = until_eos(tokens, eos_ids)
                text = postprocess_generated_text(self.tok_decode(tokens), jobs[i][1], None)
                results[i] = GenerationResult(text, stats.attn_entropy if stats is not None else math.nan)
                self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
                if self.pce.analysis_path:
                    records.append(analysis_record(self.pce, "generate_until", requests[i], jobs[i][0], stats))
            pbar.update(len(batch))
        pbar.close()
        self._write_analysis(records)
        return results

    def cache_fingerprint(self) -> str:
        """Names the ``--use_cache`` file: the settings (``PCEConfig.fingerprint``) and the model's identity."""
        return f"{self.pce.fingerprint()}-{identity_fingerprint(self.cache_identity)}"

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["pce"] = self.pce.as_dict()
        return info
