"""Bad task input, as a new user meets it: every failure is one line naming the key or the file (and the
line), and what was expected; metadata is checked before any data or tokenizer is touched."""

from __future__ import annotations

import gzip
import json

import pytest
from task_data import module, write_local_data

from lm_eval_parallel import TASKS_DIR

ICL, RAG, SYN, PPL = (module(f"{f}/utils.py") for f in ("icl", "rag", "synthetic", "ppl"))
C = ICL.C


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("PCE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PCE_DATA_DIR", str(write_local_data(tmp_path / "data")))
    C.clear_memory_cache()
    return tmp_path / "data"


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and "shared/" not in message, message
    return message


# --------------------------------------------------------------------------- ICL labels
def test_empty_label_cell_names_file_line_and_column(data):
    path = data / "icl" / "banking77" / "train.csv"
    path.write_text('text,category\n"a question",refund\n"another one",\n')
    with pytest.raises(
        C.PceDataError,
        match=r"banking77/train\.csv, line 3: column 'category' is empty; "
        r"expected a CSV file with a header and the non-empty columns text, "
        r"category",
    ) as err:
        ICL.load_icl(pce_dataset="banking77", pce_length="4k")
    one_line(err)


def test_label_column_missing_or_no_rows(data):
    path = data / "icl" / "banking77" / "train.csv"
    path.write_text("text,intent\nx,refund\n")
    with pytest.raises(C.PceDataError, match=r"train\.csv, line 1: the header \['text', 'intent'\] lacks category"):
        ICL.load_icl(pce_dataset="banking77", pce_length="4k")
    path.write_text("text,category\n")
    with pytest.raises(C.PceDataError, match=r"train\.csv: the file has a header but no rows"):
        ICL.load_icl(pce_dataset="banking77", pce_length="4k")


def test_unknown_category_names_the_categories_file(data):
    (data / "icl" / "banking77" / "test.csv").write_text("text,category\nx,refund\ny,no_such_label\n")
    with pytest.raises(
        C.PceDataError,
        match=r"test\.csv, row 2: category 'no_such_label' is not one of the 3 "
        r"names in .*categories\.json",
    ):
        ICL.load_icl(pce_dataset="banking77", pce_length="4k")


def test_build_without_labels_is_a_clear_error():
    """Once a ZeroDivisionError (math.ceil(shots / len(labels)))."""
    with pytest.raises(C.PceDataError, match="0 training and 3 test rows"):
        ICL.build_icl_docs([], [("q", 0)] * 3, n_labels=2, shots=4, n_samples=2)


# --------------------------------------------------------------------------- metadata
BAD_METADATA = [
    ({"pce_seed": "abc"}, r"^pce_seed='abc' must be an integer >= 0 and < 4294967296$"),
    ({"pce_seed": -1}, r"^pce_seed=-1 must be an integer >= 0"),
    ({"pce_seed": 2**32}, r"^pce_seed=4294967296 must be an integer >= 0 and < 4294967296$"),
    ({"pce_seed": 1.5}, r"^pce_seed=1.5 must be an integer"),
    ({"pce_n_samples": "0"}, r"^pce_n_samples='0' must be an integer >= 1$"),
    ({"pce_n_samples": "ten"}, r"^pce_n_samples='ten' must be an integer >= 1$"),
    ({"pce_fit": "maybe"}, r"^pce_fit='maybe' is not a boolean; use true or false$"),
    ({"pce_source": "web"}, r"^unknown pce_source 'web'; allowed: generate, helmet$"),
    ({"pce_sed": 7}, r"^unknown task option 'pce_sed'; did you mean 'pce_seed'\? \(task options: pce_dataset"),
]


@pytest.mark.parametrize(
    "bad,message", BAD_METADATA, ids=[next(iter(b)) + "=" + str(next(iter(b.values()))) for b, _ in BAD_METADATA]
)
def test_metadata_is_checked_before_anything_is_read(tmp_path, monkeypatch, bad, message):
    """Values are checked like model_args, before data or tokenizer: the model path here does not exist."""
    monkeypatch.setenv("PCE_DATA_DIR", str(tmp_path))  # empty: reading any data file would fail differently
    common = {"pretrained": str(tmp_path / "no_model")}
    loaders = [
        lambda **kw: SYN.load_ruler(pce_variant="mk2", pce_length="1k", **kw),
        lambda **kw: SYN.load_json_kv(pce_length="1k", **kw),
    ]
    if "pce_source" not in bad:  # a key of RULER / JSON-KV only: the other families ignore it
        loaders += [
            lambda **kw: PPL.load_ppl(pce_dataset="pg19", pce_length="1k", **kw),
            lambda **kw: ICL.load_icl(pce_dataset="nlu", pce_length="4k", **kw),
            lambda **kw: RAG.load_rag(pce_dataset="nq", pce_length="4k", **kw),
        ]
    for load in loaders:
        with pytest.raises(C.PceDataError, match=message) as err:
            load(**common, **bad)
        one_line(err)


def test_metadata_from_lm_eval_reaches_the_check(tmp_path):
    """``--metadata '{"pce_seed": "abc"}'`` arrives through lm-eval's TaskManager as a keyword of the loader."""
    from lm_eval.tasks import TaskManager

    tm = TaskManager(
        include_path=TASKS_DIR,
        include_defaults=False,
        metadata={"pce_seed": "abc", "pretrained": str(tmp_path / "no_model")},
    )
    with pytest.raises(C.PceDataError, match=r"pce_seed='abc' must be an integer"):
        tm.load(["pce_json_kv_1k"])


# --------------------------------------------------------------------------- empty / truncated local files
def _cut_gzip(text: str) -> bytes:
    return gzip.compress(text.encode())[:-12]


def _kilt(rows: int) -> str:
    return "".join(
        json.dumps({"question": f"q{i}", "answers": ["a"], "depth": 0.0, "ctxs": [{"title": "t", "text": "x"}] * 20})
        + "\n"
        for i in range(rows)
    )


BAD_FILES = [
    ("icl/banking77/test.csv", "", "icl", r"banking77/test\.csv: the file is empty; expected a CSV file"),
    (
        "icl/banking77/categories.json",
        '["card_lost", "top_',
        "icl",
        (
            r"categories\.json, line 1 column 15: not valid JSON \(Unterminated string .*truncated file\?\); "
            r"expected a JSON list of label names"
        ),
    ),
    ("icl/banking77/categories.json", "{}", "icl", r"categories\.json: not a JSON list of label names"),
    (
        "icl/trec/TREC_10.label",
        "DESC:manner how so?\nno label here\n",
        "trec",
        r"TREC_10\.label, line 2: 'no label here' is not one '<COARSE:fine> <question>' per line",
    ),
    ("icl/trec/train_5500.label", "\n\n", "trec", r"train_5500\.label: the file is empty"),
    (
        "rag/nq-open-oracle.jsonl.gz",
        gzip.compress(b""),
        "nq",
        (
            r"nq-open-oracle\.jsonl\.gz: the file has no rows; "
            r"expected one JSON object per line with \"question\", \"answers\" and \"ctxs\""
        ),
    ),
    (
        "rag/nq-open-oracle.jsonl.gz",
        _cut_gzip(_kilt(40)),
        "nq",
        (
            r"nq-open-oracle\.jsonl\.gz, line \d+: "
            r"(unreadable \(EOFError|not valid JSON).*truncated file\?"
        ),
    ),
    ("rag/hotpotqa_dev_200.jsonl", _kilt(3)[:-40], "hotpotqa", r"hotpotqa_dev_200\.jsonl, line 3: not valid JSON"),
    (
        "rag/hotpotqa_dev_200.jsonl",
        "[1, 2]\n",
        "hotpotqa",
        (
            r"hotpotqa_dev_200\.jsonl, line 1: a JSON list; "
            r"expected one JSON object per line"
        ),
    ),
    (
        "helmet/data/kilt/triviaqa-dev-multikilt_1000_k20_dep6.jsonl",
        _kilt(2)[:-10],
        "triviaqa",
        (
            r"triviaqa-dev-multikilt_1000_k20_dep6\.jsonl, line 2: not valid JSON .*expected one JSON object per line "
            r"with \"question\", \"answers\", \"ctxs\""
        ),
    ),
    ("ppl/pg19/book.txt", "", "pg19", r"pg19/book\.txt: the file is empty; expected the text of one document"),
    ("essays/a.txt", " \n", "mv", r"essays/a\.txt: the file is empty; expected the text of one essay"),
]
LOADERS = {
    "icl": lambda tok: ICL.load_icl(pce_dataset="banking77", pce_length="4k"),
    "trec": lambda tok: ICL.load_icl(pce_dataset="trec_coarse", pce_length="4k"),
    "nq": lambda tok: RAG.load_rag(pce_dataset="nq", pce_length="4k"),
    "hotpotqa": lambda tok: RAG.load_rag(pce_dataset="hotpotqa", pce_length="4k"),
    "triviaqa": lambda tok: RAG.load_rag(pce_dataset="triviaqa", pce_length="4k"),
    "pg19": lambda tok: PPL.load_ppl(pce_dataset="pg19", pce_length="1k", pretrained=tok),
    "mv": lambda tok: SYN.load_ruler(pce_variant="mv", pce_length="1k", pce_n_samples=1, pretrained=tok),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import save_tiny

    return save_tiny(str(tmp_path_factory.mktemp("tiny") / "llama"))


@pytest.mark.parametrize(
    "rel,content,loader,message", BAD_FILES, ids=[f"{r}:{i}" for i, (r, *_) in enumerate(BAD_FILES)]
)
def test_empty_or_truncated_file_names_file_line_and_expectation(data, tiny, rel, content, loader, message):
    path = data / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(C.PceDataError, match=message) as err:
        LOADERS[loader](tiny)
    one_line(err)


def test_no_documents_names_the_task():
    with pytest.raises(C.PceDataError, match=r"^pce_rag_nq_4k: no documents were built"):
        C.to_dataset([], "pce_rag_nq_4k")


def test_data_dir_that_is_not_a_folder_says_how_to_set_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PCE_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(
        C.PceDataError,
        match=r"PCE_DATA_DIR='.*nowhere' is not a folder; set it to the folder that "
        r"holds the icl/, rag/, essays/, ppl/ or helmet/ data \(export "
        r"PCE_DATA_DIR=/path/to/data\), or unset it",
    ) as err:
        ICL.load_icl(pce_dataset="banking77", pce_length="4k")
    one_line(err)
