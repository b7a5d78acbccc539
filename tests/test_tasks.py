"""The pce task suite (task_configs/): indexing, offline document builders, prompts, metrics, runs.

Everything here is offline. Tests that read ``../shared/data`` skip cleanly when it is absent.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from lm_eval_parallel import TASKS_DIR, plain_prompt, split_prompt

HERE = Path(__file__).resolve().parent
SHARED_DATA = (HERE.parent.parent / "shared" / "data").resolve()
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent")

PAPER = ("4k", "8k", "16k")
LONG = ("32k", "64k", "128k")


def _module(rel: str):
    """A task_configs Python file, loaded by path the way lm-eval loads a YAML's utils.py."""
    path = Path(TASKS_DIR) / rel
    name = "pce_test_" + rel.replace("/", "_").removesuffix(".py")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


C = _module("icl/utils.py").C
SYN = _module("synthetic/utils.py")
ICL = _module("icl/utils.py")
RAG = _module("rag/utils.py")
PPL = _module("ppl/utils.py")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    sys.path.insert(0, str(HERE))
    from tiny_models import save_tiny

    return save_tiny(str(tmp_path_factory.mktemp("tiny") / "llama"))


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    """Documents built here go to a cache folder of the test session, not the user's."""
    monkeypatch.setenv("PCE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "pce_cache"))


@pytest.fixture
def no_data(monkeypatch):
    monkeypatch.delenv("PCE_DATA_DIR", raising=False)


@pytest.fixture
def shared_data(monkeypatch):
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    monkeypatch.setenv("PCE_DATA_DIR", str(SHARED_DATA))


def expected_task_names() -> set[str]:
    names = set()
    for L in PAPER + LONG:
        names |= {f"pce_icl_{d}_{L}" for d in ("trec_coarse", "trec_fine", "banking77", "clinc150", "nlu")}
        names |= {f"pce_rag_{d}_{L}" for d in ("nq", "triviaqa", "hotpotqa", "popqa")}
        names.add(f"pce_all_{L}")
    for L in ("1k",) + PAPER + LONG:
        names |= {f"pce_ruler_{v}_{L}" for v in ("mk2", "mk3", "mv")}
        names |= {f"pce_json_kv_{L}", f"pce_ppl_pg19_{L}", f"pce_ppl_proof_pile_{L}"}
        names |= {f"pce_ruler_{L}", f"pce_synthetic_{L}", f"pce_ppl_{L}"}
    for L in PAPER + LONG:
        names |= {f"pce_icl_{L}", f"pce_rag_{L}"}
    names |= {"pce_icl", "pce_rag", "pce_ruler", "pce_json_kv", "pce_synthetic", "pce_ppl", "pce_smoke"}
    return names


# --------------------------------------------------------------------------- configs
def test_generated_yaml_is_up_to_date():
    gen = _module("generate_configs.py")
    assert gen.main(["--check"]) == 0, "run: python task_configs/generate_configs.py"


def test_task_manager_indexes_every_name():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=TASKS_DIR, include_defaults=False)
    missing = expected_task_names() - set(tm.all_tasks)
    assert not missing, sorted(missing)


# --------------------------------------------------------------------------- metrics
def test_normalize_and_subem_edge_cases():
    assert C.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert C.normalize_answer("an apple, a pear") == "apple pear"
    assert C.substring_exact_match("Answer: the Beatles.", ["Beatles"]) == 1.0
    assert C.substring_exact_match("Paris", ["London", "paris"]) == 1.0  # max over gold answers
    assert C.substring_exact_match("Paris", [["London"], ["Rome", "PARIS"]]) == 1.0  # nested lists
    assert C.substring_exact_match("Lyon", ["Paris"]) == 0.0
    assert C.exact_match("The Paris.", ["paris"]) == 1.0
    assert C.exact_match("Paris France", ["paris"]) == 0.0


def test_parse_output_and_full_vs_parsed():
    assert C.parse_output("Answer: Paris\nQuestion: x", "Answer:") == "Paris"
    assert C.parse_output("blah\nmore", "Answer:") == "blah"  # fallback: first line
    assert C.parse_output("label: 12\nlabel: 3", "label:") == "12"
    assert C.parse_output("LABEL:7", "label:") == "7"  # case-insensitive
    # full output wins when the gold answer is on a later line
    assert C.subem_full_or_parsed("Answer: no idea\nIt is Paris", ["Paris"], "Answer:") == 1.0
    # parsed line wins where normalisation of the full output would merge tokens? both are maxed
    assert C.subem_full_or_parsed("Answer:", ["Paris"], "Answer:") == 0.0


def test_icl_and_rag_and_ruler_process_results():
    from lm_eval_parallel.response import GenerationResult

    doc = {"answers": ["12"]}
    assert ICL.process_results(doc, [" 12\n\nthe rest"])["exact_match"] == 1.0
    assert ICL.process_results(doc, [" 123"])["exact_match"] == 0.0
    assert ICL.process_results(doc, [" 12."])["exact_match"] == 1.0  # punctuation is normalised away
    out = RAG.process_results({"answers": ["Paris", "City of Light"]}, [GenerationResult(" the city of light", 1.25)])
    assert out["subem"] == 1.0 and out["attn_entropy"] == 1.25
    assert math.isnan(RAG.process_results({"answers": ["x"]}, [" y"])["attn_entropy"])
    answers = {"answers": ["1111111", "2222222", "3333333", "4444444"]}
    r = SYN.process_results_ruler(answers, [" 2222222, 4444444 and 9"])
    assert r["ruler_recall"] == 0.5
    assert SYN.process_results_json_kv({"answers": ["ab-cd"]}, [' "AB-CD"'])["subem"] == 1.0


def test_ppl_process_results_weights():
    from lm_eval.api.metrics import bits_per_byte, weighted_perplexity

    from lm_eval_parallel.response import LoglikelihoodResult

    docs = [{"n_tokens": 10, "n_bytes": 40}, {"n_tokens": 30, "n_bytes": 100}]
    res = [
        PPL.process_results(docs[0], [LoglikelihoodResult(-20.0, False, 2.0)]),
        PPL.process_results(docs[1], [(-30.0, False)]),
    ]
    assert res[0]["attn_entropy"] == 2.0 and math.isnan(res[1]["attn_entropy"])
    assert weighted_perplexity([r["perplexity"] for r in res]) == pytest.approx(math.exp(50 / 40))
    assert bits_per_byte([r["bits_per_byte"] for r in res]) == pytest.approx(50 / 140 / math.log(2))
    assert [r["score"] for r in res] == [r["perplexity"] for r in res]  # score: the perplexity, token-weighted


# --------------------------------------------------------------------------- synthetic (generated, no data)
RULER_Q = {
    "mk2": "\n\nA special magic number is hidden within the above text. "
    "The special magic number for {k} mentioned in the provided text is",
    "mk3": "\n\nA special magic uuid is hidden within the above text. "
    "The special magic uuid for {k} mentioned in the provided text is",
    "mv": "\n\nSome special magic numbers are hidden within the above text. "
    "The special magic numbers for {k} mentioned in the provided text are",
}


@pytest.mark.parametrize("variant", ["mk2", "mk3", "mv"])
def test_ruler_generated_prompt_and_size(tiny, no_data, variant):
    ds = SYN.load_ruler(pce_variant=variant, pce_length="1k", pce_n_samples=3, pretrained=tiny)["test"]
    assert len(ds) == 3
    doc = ds[0]
    text = SYN.doc_to_text(doc)
    items, query, sink = split_prompt(text)
    assert sink is None and items == doc["items"] and len(items) > 1
    plain = plain_prompt(text)
    assert query == RULER_Q[variant].format(k=doc["key"])
    assert plain == "".join(doc["items"]) + query
    for value in doc["answers"]:
        kind = "uuids" if variant == "mk3" else "numbers"
        assert f"One of the special magic {kind} for {doc['key']} is: {value}." in plain
    assert len(doc["answers"]) == (4 if variant == "mv" else 1)
    budget = 1024 - {"mk2": 50, "mk3": 100, "mv": 50}[variant] - 1
    tok = C.tokenizer_of((tiny, None, None))
    n = C.count_tokens(tok, plain)
    assert n <= budget and n > 0.8 * budget
    if variant == "mv":
        assert doc["haystack"] == "zen_of_python"  # no PCE_DATA_DIR: the stdlib's PEP 20 fallback


def test_batched_fitting_keeps_the_longest_head_that_fits(tiny):
    """fit_items_many (one batched count for all documents) keeps, for each document, the longest head of its
    items whose prompt fits the budget, as a one-count-at-a-time search from the end finds it; and the generated
    RULER documents record the token count of the prompt they keep."""
    tok = C.tokenizer_of((tiny, None, None))
    items_of = [[f"Item {i} of doc {d} says {'word ' * (i % 5)}.\n" for i in range(30)] for d in range(4)]
    queries = [f"Question {d}?" for d in range(4)]
    budgets = (5, 60, 150, 10**6)
    for budget in budgets:

        def brute(items, query, budget=budget):
            n = len(items)
            while n > 1 and C.count_tokens(tok, "".join(items[:n]) + query) > budget:
                n -= 1
            return items[:n]

        assert C.fit_items_many(tok, items_of, queries, budget) == [brute(i, q) for i, q in zip(items_of, queries)]
    assert C.count_tokens_many(tok, ["", "a b c", queries[0]]) == [
        C.count_tokens(tok, t) for t in ("", "a b c", queries[0])
    ]
    for doc in SYN.load_json_kv(pce_length="1k", pce_n_samples=3, pretrained=tiny)["test"]:
        assert doc["n_tokens"] == C.count_tokens(tok, "".join(doc["items"]) + doc["query"])


def test_json_kv_generated_prompt(tiny, no_data):
    doc = SYN.load_json_kv(pce_length="1k", pce_n_samples=2, pretrained=tiny)["test"][0]
    plain = plain_prompt(SYN.doc_to_text(doc))
    assert all(it.startswith('    "') and it.endswith('",\n') for it in doc["items"])
    assert f'    "{doc["key"]}": "{doc["answers"][0]}",\n' in doc["items"]
    assert plain.endswith(
        "}\n\nExtract the value corresponding to the specified key in the JSON object above.\n\n"
        f"Key: {doc['key']}\nCorresponding value:"
    )


def test_generated_docs_are_deterministic(tiny, no_data, monkeypatch):
    monkeypatch.setenv("PCE_DOCS_CACHE", "0")  # every build below generates (the cache is tested elsewhere)
    C.clear_memory_cache()
    a = SYN.load_ruler(pce_variant="mk2", pce_length="1k", pce_n_samples=3, pretrained=tiny)["test"].to_list()
    C.clear_memory_cache()
    b = SYN.load_ruler(pce_variant="mk2", pce_length="1k", pce_n_samples=3, pretrained=tiny)["test"].to_list()
    c = SYN.load_ruler(pce_variant="mk2", pce_length="1k", pce_n_samples=3, pce_seed=7, pretrained=tiny)[
        "test"
    ].to_list()
    assert repr(a) == repr(b) and repr(a) != repr(c)
    k1 = SYN.load_json_kv(pce_length="1k", pce_n_samples=2, pretrained=tiny)["test"].to_list()
    C.clear_memory_cache()
    assert repr(k1) == repr(SYN.load_json_kv(pce_length="1k", pce_n_samples=2, pretrained=tiny)["test"].to_list())


def test_clear_errors(tiny, no_data):
    with pytest.raises(C.PceDataError, match=r"unknown length '3k'; allowed: 1k, 4k"):
        SYN.load_ruler(pce_variant="mk2", pce_length="3k", pretrained=tiny)
    with pytest.raises(C.PceDataError, match="pretrained="):
        SYN.load_json_kv(pce_length="1k")
    with pytest.raises(C.PceDataError, match="unknown RULER variant 'mk9'"):
        SYN.load_ruler(pce_variant="mk9", pce_length="1k", pretrained=tiny)
    with pytest.raises(C.PceDataError, match="allowed: 4k, 8k"):
        ICL.load_icl(pce_dataset="nlu", pce_length="1k")


def test_missing_local_source_is_named(tmp_path, monkeypatch, tiny):
    monkeypatch.setenv("PCE_DATA_DIR", str(tmp_path))
    with pytest.raises(C.PceDataError, match=r"icl/banking77/categories.json"):
        ICL.load_icl(pce_dataset="banking77", pce_length="4k")
    with pytest.raises(C.PceDataError, match=r"rag/nq-open-oracle.jsonl.gz"):
        RAG.load_rag(pce_dataset="nq", pce_length="4k")
    with pytest.raises(C.PceDataError, match=r"no local source for popqa"):
        RAG.load_rag(pce_dataset="popqa", pce_length="4k")
    with pytest.raises(C.PceDataError, match=r"ppl/pg19"):
        PPL.load_ppl(pce_dataset="pg19", pce_length="1k", pretrained=tiny)


def test_corrupt_or_misplaced_local_data_is_named(tmp_path, monkeypatch, tiny):
    import gzip

    (tmp_path / "icl" / "banking77").mkdir(parents=True)
    (tmp_path / "icl" / "banking77" / "categories.json").write_text("[not json")
    (tmp_path / "rag").mkdir()
    (tmp_path / "rag" / "nq-open-oracle.jsonl.gz").write_bytes(gzip.compress(b'{"question": "q"')[:-6])
    monkeypatch.setenv("PCE_DATA_DIR", str(tmp_path))
    with pytest.raises(
        C.PceDataError,
        match=r"banking77/categories.json, line 1 column 2: not valid JSON .*"
        r"expected a JSON list of label names",
    ):
        ICL.load_icl(pce_dataset="banking77", pce_length="4k")
    with pytest.raises(C.PceDataError, match=r"nq-open-oracle.jsonl.gz, line 1: unreadable .*truncated file"):
        RAG.load_rag(pce_dataset="nq", pce_length="4k")
    monkeypatch.setenv("PCE_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(C.PceDataError, match=r"PCE_DATA_DIR='.*nowhere' is not a folder"):
        ICL.load_icl(pce_dataset="banking77", pce_length="4k")


# --------------------------------------------------------------------------- ICL
def test_icl_balanced_rounds_and_permutation():
    train = [(f"t{lab}-{i}", lab) for lab in range(3) for i in range(5)]
    test = [(f"q{i}", i % 3) for i in range(7)]
    docs = ICL.build_icl_docs(train, test, 3, shots=7, n_samples=4)
    assert len(docs) == 4
    for doc in docs:
        assert len(doc["items"]) == 7
        texts = [it.split("\n")[0] for it in doc["items"]]
        labels_of_text = [int(t[1]) for t in texts]
        for r in range(2):  # full rounds hold every label once
            assert sorted(labels_of_text[3 * r : 3 * r + 3]) == [0, 1, 2]
        shown = {t: int(it.split("label: ")[1]) for t, it in zip(texts, doc["items"])}
        mapping = {int(t[1]): v for t, v in shown.items()}
        assert sorted(mapping.values()) == [0, 1, 2]
        q_label = int(doc["query"].split("\n")[-2][1:]) % 3
        assert doc["answers"] == [str(mapping[q_label])]
    assert ICL.build_icl_docs(train, test, 3, 7, 4) == docs


@needs_data
@pytest.mark.parametrize("dataset", ["trec_coarse", "trec_fine", "banking77", "clinc150", "nlu"])
def test_icl_local_prompt(shared_data, dataset):
    ds = ICL.load_icl(pce_dataset=dataset, pce_length="4k", pce_n_samples=3)["test"]
    doc = ds[0]
    assert len(doc["items"]) == ICL.SHOTS[dataset]["4k"]  # no tokenizer given: no truncation
    plain = plain_prompt(ICL.doc_to_text(doc))
    text = doc["query"].split("\n\n", 1)[1].rsplit("\nlabel:", 1)[0]
    assert plain == "".join(doc["items"]) + (
        'Use the provided mapping from the text to label to assign a label to the text. Only output "label: {label}" '
        f"and nothing else.\n\n{text}\nlabel:"
    )
    assert all(it.count("\nlabel: ") == 1 and it.endswith("\n\n") for it in doc["items"])


@needs_data
def test_icl_fit_to_length(shared_data, tiny):
    doc = ICL.load_icl(pce_dataset="trec_coarse", pce_length="4k", pce_n_samples=1, pretrained=tiny)["test"][0]
    tok = C.tokenizer_of((tiny, None, None))
    assert C.count_tokens(tok, plain_prompt(ICL.doc_to_text(doc))) <= 4096 - 20 - 1
    assert 0 < doc["n_items"] <= 200


# --------------------------------------------------------------------------- RAG
@needs_data
@pytest.mark.parametrize("dataset,k", [("nq", 20), ("hotpotqa", 20), ("nq", 50)])
def test_rag_local_prompt(shared_data, dataset, k):
    length = {20: "4k", 50: "8k"}[k]
    doc = RAG.load_rag(pce_dataset=dataset, pce_length=length, pce_n_samples=3)["test"][0]
    assert len(doc["items"]) == k
    assert all(it.startswith("Document (Title: ") and it.endswith("\n\n") for it in doc["items"])
    plain = plain_prompt(RAG.doc_to_text(doc))
    assert plain == "".join(doc["items"]) + (
        "Use the given documents to write a concise and short answer to the question. Write your answer in the "
        f"following format:\nAnswer: [answer]\n\nQuestion: {doc['question']}\nAnswer:"
    )
    assert doc["answers"]


# --------------------------------------------------------------------------- PPL
@needs_data
@pytest.mark.parametrize("dataset", ["pg19", "proof_pile"])
def test_ppl_windows_round_trip(shared_data, tiny, dataset):
    from lm_eval_parallel.requests import encode_pair

    ds = PPL.load_ppl(pce_dataset=dataset, pce_length="1k", pce_n_samples=5, pretrained=tiny)["test"]
    tok = C.tokenizer_of((tiny, None, None))
    assert len(ds) == 5
    for doc in ds:
        ctx, cont = encode_pair(tok, doc["context"], doc["continuation"])
        assert len(ctx) == 1024 - 256 and len(cont) == 256 == doc["n_tokens"]
        assert doc["n_bytes"] == len(doc["continuation"].encode())
        assert split_prompt(doc["context"]) is None  # unmarked: parallel_hf's LM protocol


# --------------------------------------------------------------------------- in-process runs (stock hf model)
def _evaluate(tasks, tiny, limit=None, **kwargs):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    # simple_evaluate merges model_args into the task metadata only for the TaskManager it makes itself
    tm = TaskManager(include_path=TASKS_DIR, include_defaults=False, metadata={"pretrained": tiny})
    return simple_evaluate(
        model="hf",
        model_args=f"pretrained={tiny},dtype=float32",
        tasks=tasks,
        task_manager=tm,
        limit=limit,
        device="cpu",
        batch_size=1,
        **kwargs,
    )


def test_evaluate_generated_tasks_hf(tiny, no_data):
    out = _evaluate(["pce_ruler_mk3_1k", "pce_json_kv_1k"], tiny, limit=2, log_samples=True)
    for task, metric in (("pce_ruler_mk3_1k", "ruler_recall"), ("pce_json_kv_1k", "subem")):
        res = out["results"][task]
        assert 0.0 <= res[f"{metric},none"] <= 1.0 and "attn_entropy,none" in res
        assert len(out["samples"][task]) == 2


@needs_data
def test_evaluate_ppl_and_icl_hf(tiny, shared_data):
    out = _evaluate(["pce_ppl_pg19_1k", "pce_icl_trec_coarse_4k"], tiny, limit=2)
    ppl = out["results"]["pce_ppl_pg19_1k"]
    assert ppl["perplexity,none"] > 1 and ppl["bits_per_byte,none"] > 0 and "attn_entropy,none" in ppl
    assert "exact_match,none" in out["results"]["pce_icl_trec_coarse_4k"]


def test_ppl_score_is_its_perplexity_on_the_board(tiny, tmp_path, monkeypatch):
    """PPL tasks report ``score`` like every pce task: their token-weighted perplexity, lower is better; the
    pce_ppl group averages it; the leaderboard still scores the task by ``perplexity``, lower is better."""
    from task_data import sentence, write_local_data

    from lm_eval_parallel.leaderboard.reader import read_results_file

    data = write_local_data(tmp_path / "data")
    (data / "ppl" / "proof_pile").mkdir()
    (data / "ppl" / "proof_pile" / "paper.tex").write_text("".join(sentence(i) for i in range(1200, 2400)))
    monkeypatch.setenv("PCE_DATA_DIR", str(data))
    out = _evaluate(["pce_ppl_1k"], tiny, limit=2)
    tasks = ("pce_ppl_pg19_1k", "pce_ppl_proof_pile_1k")
    for task in tasks:
        res = out["results"][task]
        assert res["score,none"] == res["perplexity,none"] > 1
        assert out["higher_is_better"][task]["score"] is False
    group = out["results"]["pce_ppl_1k"]
    assert group["score,none"] == pytest.approx(sum(out["results"][t]["score,none"] for t in tasks) / 2, rel=1e-12)
    rows = read_results_file(str(tmp_path / "results.json"), out)
    assert {(r.task, r.metric, r.higher_is_better) for r in rows} == {(t, "perplexity", False) for t in tasks}


def test_helmet_files_lookup_and_clear_error(tmp_path, monkeypatch):
    """HELMET members: $PCE_DATA_DIR/helmet first, then the cache, then a (here failing) stream download."""
    member = "data/kilt/triviaqa-dev-multikilt_1000_k20_dep6.jsonl"
    monkeypatch.setenv("PCE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PCE_DATA_DIR", raising=False)

    def offline(member, target):
        raise OSError("no network")

    monkeypatch.setattr(C, "_stream_extract", offline)
    with pytest.raises(
        C.PceDataError, match=r"HELMET file .*triviaqa.*download https://huggingface.co/datasets/princeton-nlp/HELMET"
    ):
        RAG.load_rag(pce_dataset="triviaqa", pce_length="4k")
    # an unpacked copy under $PCE_DATA_DIR/helmet is used as is
    import json

    rows = [
        {
            "question": f"q{i}",
            "answers": [f"a{i}", f"b{i}"],
            "depth": 0.2,
            "ctxs": [{"title": f"T{j}", "text": f"text {j}"} for j in range(20)],
        }
        for i in range(5)
    ]
    path = tmp_path / "data" / "helmet" / member
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("PCE_DATA_DIR", str(tmp_path / "data"))
    ds = RAG.load_rag(pce_dataset="triviaqa", pce_length="4k", pce_n_samples=3)["test"]
    assert len(ds) == 3 and ds[0]["source"] == "helmet" and len(ds[0]["items"]) == 20
    assert ds[0]["items"][0] == "Document (Title: T0): text 0\n\n"
    assert [d["question"] for d in ds] == [rows[i]["question"] for i in C.sample_indices(5, 3)]


def test_popqa_filter():
    assert RAG.popqa_keep({"s_pop": 999}) and not RAG.popqa_keep({"s_pop": 1000})


@pytest.mark.parametrize(
    "dataset,field,test_split",
    [
        ("trec_coarse", "coarse_label", "test"),
        ("trec_fine", "fine_label", "test"),
        ("banking77", "label", "test"),
        ("clinc150", "intent", "validation"),
        ("nlu", "label", None),
    ],
)
def test_icl_online_sources_read_the_fields_helmet_reads(monkeypatch, dataset, field, test_split):
    """The HF datasets of HF_SOURCES, without a network: a stand-in load_dataset with their columns."""
    import datasets

    def fake(repo, config=None, revision=None):
        assert (repo, config, revision) == ICL.HF_SOURCES[dataset]
        features = datasets.Features({"text": datasets.Value("string"), field: datasets.ClassLabel(num_classes=4)})

        def rows(n, offset):
            data = {"text": [f"t{offset + i}" for i in range(n)], field: [i % 4 for i in range(n)]}
            return datasets.Dataset.from_dict(data, features=features)

        splits = {"train": rows(20, 0)} | ({test_split: rows(6, 100)} if test_split else {})
        return datasets.DatasetDict(splits)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    train, test, n_labels = ICL._online(dataset)
    assert n_labels == 4
    if test_split:
        assert train == [(f"t{i}", i % 4) for i in range(20)] and test == [(f"t{100 + i}", i % 4) for i in range(6)]
    else:  # nlu: HELMET's 90/10 split of the one train split, seed 42
        assert len(train) == 18 and len(test) == 2
        assert sorted(train + test) == sorted((f"t{i}", i % 4) for i in range(20))
